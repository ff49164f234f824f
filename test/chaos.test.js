// Chaos run of the sorter flow in a real Node-RED process at 10 frames/s: the broker stops and comes
// back, a Modified Flows deploy, the model file replaced by a broken one and then a good one, damaged
// files dropped into the spool, and Node-RED SIGKILLed and started again. Afterwards every result the
// publish node accepted (it passes a message on only once the result is on disk) has been delivered
// at least once, Node-RED only died when killed, no ffmpeg is left and memory stayed bounded.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { ROOT, MODEL, tmpDir, freePort, sleep, until, validationPhotos, startMosquitto, collect, nodeRedUserDir, startNodeRed, deployFlows } = require('./helpers');

const MAX_RSS_MB = 1024;

/** Node-RED with its peak RSS sampled. */
function startSampledNodeRed(userDir, port, env) {
  const proc = startNodeRed(userDir, port, env);
  proc.maxRssMb = 0;
  const sampler = setInterval(() => {
    try {
      const rss = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${proc.red.pid}/status`, 'utf8'));
      if (rss) proc.maxRssMb = Math.max(proc.maxRssMb, Number(rss[1]) / 1024);
    } catch { /* exited */ }
  }, 250);
  proc.red.once('exit', () => clearInterval(sampler));
  return proc;
}

function ffmpegChildren(pid) {
  try {
    return execFileSync('pgrep', ['-P', String(pid), 'ffmpeg'], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
  } catch {
    return 0; // pgrep exits 1 when nothing matches
  }
}

test('chaos: broker outage, redeploy, broken model, damaged spool files and a SIGKILL lose no accepted result', async () => {
  const work = tmpDir('gg-chaos-');
  // The sample flow, plus a record of what the result publish node accepted: its output fires only
  // once the result is on disk in the spool, so each id written here must reach the broker.
  const flow = JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'recycling-sorter.json'), 'utf8'));
  const acceptedFile = path.join(work, 'accepted.txt');
  flow.find((n) => n.id === 'publish-result').wires = [['chaos-accepted-id']];
  flow.push(
    { id: 'chaos-accepted-id', type: 'change', z: 'sorter-tab', x: 900, y: 500, rules: [{ t: 'set', p: 'payload', pt: 'msg', to: 'payload.id', tot: 'msg' }], wires: [['chaos-accepted-log']] },
    { id: 'chaos-accepted-log', type: 'file', z: 'sorter-tab', x: 1100, y: 500, filename: acceptedFile, filenameType: 'str', appendNewline: true, createDir: true, overwriteFile: 'false', encoding: 'utf8', wires: [[]] },
  );
  const userDir = nodeRedUserDir(work, flow);
  const source = path.join(work, 'photos');
  fs.mkdirSync(source);
  for (const p of validationPhotos(3)) fs.symlinkSync(p.file, path.join(source, `${p.label}-${path.basename(p.file)}`));
  const model = path.join(work, 'model.onnx');
  fs.copyFileSync(MODEL, model);

  // A persistent broker and subscriber session, so results published while the test's own client
  // reconnects after the broker restart are kept for it.
  const brokerDir = tmpDir('gg-chaos-mosq-');
  const listener = (p) => `listener ${p} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000`;
  let broker = await startMosquitto({ dir: brokerDir, listener });
  const sub = await collect(broker.url, ['recycling/+/result'], 5, { clean: false, clientId: 'chaos-dashboard', properties: { sessionExpiryInterval: 3600 }, reconnectPeriod: 200 });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const spoolDir = path.join(work, 'spool');
  const env = {
    SORTER_SOURCE: source, SORTER_INTERVAL_MS: '100', SORTER_CAMERA_ID: 'belt1', MQTT_URL: broker.url, SORTER_MODEL: model,
    SORTER_REVIEW_DIR: path.join(work, 'review'), SORTER_SPOOL_DIR: spoolDir,
  };
  const runs = [startSampledNodeRed(userDir, port, env)];
  const delivered = () => sub.messages.map((m) => JSON.parse(m.payload).id);
  try {
    await until(() => /Started flows/.test(runs[0].log), 60_000, 'Node-RED to start');
    await until(() => sub.messages.length >= 10, 30_000, 'the first results');

    // 1. The broker goes away for 4 s and comes back.
    await broker.close();
    await sleep(4000);
    const mark = runs[0].log.length;
    broker = await startMosquitto({ dir: brokerDir, listener, port: broker.port });
    await until(() => /connected to/.test(runs[0].log.slice(mark)), 20_000, 'the connection back');
    const afterOutage = sub.messages.length;
    await until(() => sub.messages.length >= afterOutage + 10, 20_000, 'results after the outage');

    // 2. A Modified Flows deploy.
    await deployFlows(base, 'flows', (flows) => flows.map((n) => (n.id === 'route' ? { ...n, name: 'bins (chaos)' } : n)));
    const afterDeploy = sub.messages.length;
    await until(() => sub.messages.length >= afterDeploy + 10, 10_000, 'results after the deploy');

    // 3. The model file is replaced by a broken one, then by a good one (the node watches it).
    fs.writeFileSync(`${model}.tmp`, 'this is not an ONNX model');
    fs.renameSync(`${model}.tmp`, model);
    await sleep(2000);
    const withBrokenModel = sub.messages.length;
    await until(() => sub.messages.length >= withBrokenModel + 5, 10_000, 'results while the file is broken (the old model keeps serving)');
    // (the file is read once it has not changed for 2.5 polls of the watch)
    await until(() => /kept the previous model: the new .*model\.onnx was refused/.test(runs[0].log), 10_000, 'the broken model refused');
    const mark2 = runs[0].log.length;
    fs.copyFileSync(MODEL, `${model}.tmp`);
    fs.renameSync(`${model}.tmp`, model);
    await until(() => /reloaded .*model\.onnx/.test(runs[0].log.slice(mark2)), 10_000, 'the good model to be loaded again');

    // 4. Damaged files appear in the spool folder, and the broker goes away again so results pile up.
    fs.writeFileSync(path.join(spoolDir, '00000000000001.msg'), '');
    fs.writeFileSync(path.join(spoolDir, '00000000000002.msg'), '\u0000\u00ffgarbage{"topic":');
    await broker.close();
    await until(() => fs.existsSync(acceptedFile) && fs.readFileSync(acceptedFile, 'utf8').split('\n').filter(Boolean).length > new Set(delivered()).size + 10, 15_000, 'results waiting in the spool');

    // 5. Node-RED is killed without a chance to clean up, and started again.
    runs[0].red.kill('SIGKILL');
    await runs[0].exited();
    assert.equal(runs[0].red.signalCode, 'SIGKILL', `the first Node-RED died only when killed:\n${runs[0].log.slice(-3000)}`);
    broker = await startMosquitto({ dir: brokerDir, listener, port: broker.port });
    runs.push(startSampledNodeRed(userDir, port, env));
    await until(() => /Started flows/.test(runs[1].log), 60_000, 'Node-RED to start again');

    // Every accepted result arrives, old ones from the spool and new ones alike.
    const accepted = () => fs.readFileSync(acceptedFile, 'utf8').split('\n').filter(Boolean);
    const missing = () => {
      const got = new Set(delivered());
      return accepted().filter((id) => !got.has(id));
    };
    await until(() => missing().length === 0, 60_000, 'every accepted result to be delivered').catch((err) => {
      throw new Error(`${err.message}: ${missing().length} missing, e.g. ${missing().slice(0, 5)}`);
    });
    assert.equal(runs[1].red.exitCode, null, 'the restarted Node-RED is running');
    assert.ok(fs.readdirSync(path.join(spoolDir, 'quarantine')).length >= 2, 'the damaged files were set aside');
    assert.match(runs[1].log, /00000000000001\.msg is not a readable spooled message \(the file is empty\)/);
    assert.doesNotMatch(runs.map((r) => r.log).join('\n'), /Unhandled|uncaughtException/i);
    assert.equal(ffmpegChildren(runs[1].red.pid), 0, 'no ffmpeg running');
    const ids = delivered();
    const counts = { accepted: accepted().length, delivered: new Set(ids).size, duplicates: ids.length - new Set(ids).size };
    const maxRss = Math.max(...runs.map((r) => r.maxRssMb));
    console.log(`# chaos: accepted ${counts.accepted}, delivered ${counts.delivered}, duplicates ${counts.duplicates}, max RSS ${maxRss.toFixed(0)} MB`);
    assert.ok(maxRss < MAX_RSS_MB, `Node-RED RSS peaked at ${maxRss.toFixed(0)} MB`);
  } finally {
    for (const r of runs) {
      if (r.red.exitCode === null && !r.red.signalCode) r.red.kill('SIGINT');
      await r.exited();
    }
    await sub.close();
    await broker.close();
  }
});
