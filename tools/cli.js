// What the command-line tools share: `--name value` options, the project's folders, percentiles.
const path = require('path');

const root = path.resolve(__dirname, '..');
const defaultDataset = path.resolve(root, '..', 'shared', 'datasets', 'trashnet');
const args = process.argv.slice(2);

/** The value after `--name`, or the fallback. */
function option(name, fallback) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
}

const flag = (name) => args.includes(`--${name}`);

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

module.exports = { root, defaultDataset, args, option, flag, percentile };
