// Which flow `npm start` runs: SORTER_FLOW names one of flows/*.json (default recycling-sorter).
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const DEFAULT_FLOW = 'recycling-sorter';

function availableFlows() {
  return fs.readdirSync(path.join(root, 'flows')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -'.json'.length)).sort();
}

const flowName = (env) => (env.SORTER_FLOW || '').trim() || DEFAULT_FLOW;

/**
 * The flow file in the user directory: the sorter keeps flows.json (where earlier versions put it,
 * perhaps edited since), every other flow a file of its own, so switching flows never overwrites one.
 */
function userFlowFile(env = process.env) {
  const name = flowName(env);
  return name === DEFAULT_FLOW ? 'flows.json' : `flows-${name.replace(/[^\w.-]/g, '_')}.json`;
}

/** The chosen flow: {name, source, flowFile}. Throws naming the flows there are. */
function chosenFlow(env = process.env) {
  const name = flowName(env);
  const names = availableFlows();
  if (!names.includes(name)) {
    throw new Error(`SORTER_FLOW is ${JSON.stringify(name)}, which is not one of this project's flows; expected one of ${names.join(', ')} (the files in flows/)`);
  }
  return { name, source: path.join(root, 'flows', `${name}.json`), flowFile: userFlowFile(env) };
}

module.exports = { DEFAULT_FLOW, availableFlows, userFlowFile, chosenFlow };
