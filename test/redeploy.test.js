// The sorter flow in a real Node-RED process, edited and deployed the ways the editor deploys
// (admin API `POST /flows` with Node-RED-Deployment-Type full, flows, nodes and reload), then killed
// without warning and started again: results must keep coming after every one of them.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { ROOT, tmpDir, freePort, sleep, until, validationPhotos, startMosquitto, collect, nodeRedUserDir, startNodeRed, deployFlows } = require('./helpers');

const RESUME_WITHIN_MS = 5000;

async function waitForLog(proc, pattern, from, timeoutMs, what) {
  await until(() => pattern.test(proc.log.slice(from)) || proc.red.exitCode !== null, timeoutMs, what);
  if (proc.red.exitCode !== null) throw new Error(`Node-RED exited (${proc.red.exitCode}) while waiting for ${what}:\n${proc.log}`);
}

const count = (text, pattern) => (text.match(pattern) ?? []).length;

test('results keep coming after full, flows, nodes and reload deploys, tab disable, connection edits and moves, and after Node-RED is killed', async () => {
  const work = tmpDir('gg-redeploy-');
  const userDir = nodeRedUserDir(work, JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'recycling-sorter.json'), 'utf8')));
  const source = path.join(work, 'photos');
  fs.mkdirSync(source);
  for (const p of validationPhotos(2)) fs.symlinkSync(p.file, path.join(source, `${p.label}-${path.basename(p.file)}`));

  let broker = await startMosquitto();
  let sub = await collect(broker.url, ['recycling/+/result', 'recycling/+/divert']);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const env = {
    SORTER_SOURCE: source, SORTER_INTERVAL_MS: '200', SORTER_CAMERA_ID: 'belt1', MQTT_URL: broker.url,
    SORTER_REVIEW_DIR: path.join(work, 'review'), SORTER_SPOOL_DIR: path.join(work, 'spool'),
  };
  let proc = startNodeRed(userDir, port, env);
  const results = () => sub.messages.filter((m) => m.topic.endsWith('/result'));
  const diverts = () => sub.messages.filter((m) => m.topic.endsWith('/divert'));
  try {
    await waitForLog(proc, /Started flows/, 0, 60_000, 'Node-RED to start');
    await until(() => results().length >= 5, 30_000, 'the first results');

    const figures = [];
    for (const type of ['flows', 'nodes', 'full', 'reload']) {
      const connectionsBefore = count(proc.log, /connected to /g);
      const before = { results: results().length, diverts: diverts().length };
      const started = Date.now();
      // What a user does in the editor: rename the routing node, then deploy.
      await deployFlows(base, type, (flows) => flows.map((n) => (n.id === 'route' ? { ...n, name: `bins (${type})` } : n)));
      await until(() => results().length >= before.results + 3 && diverts().length >= before.diverts + 3, RESUME_WITHIN_MS,
        `results and bin decisions to resume after a "${type}" deploy`);
      figures.push(`${type} ${Date.now() - started} ms`);
      if (type === 'flows' || type === 'nodes') {
        // Only the routing node changed: the shared connection (and model) stay up through it.
        assert.equal(count(proc.log, /connected to /g), connectionsBefore, `a "${type}" deploy of the route node did not reconnect`);
      }
    }
    // Editor actions beyond a plain deploy: disable and enable the tab, edit the shared connection,
    // move one publish node to a second connection (deployed as Modified Flows, as the editor does).
    const deploy = (type, edit) => deployFlows(base, type, edit);
    const resumes = async (what) => {
      const before = { results: results().length, diverts: diverts().length };
      const started = Date.now();
      await until(() => results().length >= before.results + 3 && diverts().length >= before.diverts + 3, RESUME_WITHIN_MS, `results to resume after ${what}`)
        .catch((err) => { throw new Error(`${err.message}; Node-RED's log ends:\n${proc.log.slice(-3000)}`); });
      figures.push(`${what} ${Date.now() - started} ms`);
    };
    await deploy('flows', (flows) => flows.map((n) => (n.type === 'tab' ? { ...n, disabled: true } : n)));
    await sleep(1000);
    const whileDisabled = results().length;
    await sleep(1000);
    assert.ok(results().length <= whileDisabled + 1, 'a disabled tab sends nothing');
    await deploy('flows', (flows) => flows.map((n) => (n.type === 'tab' ? { ...n, disabled: false } : n)));
    await resumes('tab enabled');
    await deploy('nodes', (flows) => flows.map((n) => (n.id === 'sorter-connection' ? { ...n, keepalive: 45 } : n)));
    await resumes('connection edited');
    await deploy('flows', (flows) => [
      ...flows.map((n) => (n.id === 'publish-result' ? { ...n, connection: 'second-connection' } : n)),
      { ...flows.find((n) => n.id === 'sorter-connection'), id: 'second-connection', name: 'second broker', spoolDir: path.join(work, 'spool-2') },
    ]);
    await resumes('result publish moved to another connection');
    console.log(`# results resumed after deploys: ${figures.join(', ')}`);
    assert.doesNotMatch(proc.log, /Unhandled|uncaught/i);

    // The broker goes away; results wait on disk; then Node-RED is killed without a chance to clean up.
    await sub.close();
    await broker.close();
    const outageFrom = Date.now();
    await until(() => fs.existsSync(env.SORTER_SPOOL_DIR) && fs.readdirSync(env.SORTER_SPOOL_DIR).some((f) => f.endsWith('.log')), 10_000, 'results on disk');
    await sleep(1500);
    const killedAt = Date.now();
    proc.red.kill('SIGKILL');
    await proc.exited();

    broker = await startMosquitto({ port: broker.port });
    sub = await collect(broker.url, ['recycling/+/result']);
    proc = startNodeRed(userDir, port, env);
    await waitForLog(proc, /Started flows/, 0, 60_000, 'Node-RED to start again');
    // The killed process left its lock behind: the new one takes the folder over and sends the backlog.
    await until(() => /took over the spool folder/.test(proc.log), 10_000, 'the stale spool lock to be taken over');
    const capturedDuringOutage = (m) => {
      const at = Date.parse(JSON.parse(m.payload).capturedAt);
      return at > outageFrom && at < killedAt;
    };
    await until(() => results().filter(capturedDuringOutage).length >= 5, 20_000, 'results spooled before the kill');
    await until(() => results().some((m) => Date.parse(JSON.parse(m.payload).capturedAt) > Date.now() - 5000), 20_000, 'new results after the restart');
    assert.doesNotMatch(proc.log, /Unhandled|uncaught/i);
  } finally {
    proc.red.kill('SIGINT');
    await proc.exited();
    await sub.close().catch(() => undefined);
    await broker.close();
  }
});
