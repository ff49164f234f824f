// The Greengrass component: build its artifact, then do what the nucleus does with the recipe:
// unpack the artifact, substitute the recipe variables, set the component environment (IPC socket
// and token of a test nucleus), run Install and Run, and see results published over IPC.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { tmpDir, validationPhotos, sleep, killOnExit } = require('./helpers');
const { build } = require('../tools/build-component');
const { FakeNucleusIpc } = require('./fixtures/ipc-server');

function substitute(text, vars) {
  return text.replace(/\{([a-z]+):([^}]+)\}/gi, (whole, ns, key) => {
    const value = vars[`${ns}:${key}`];
    if (value === undefined) throw new Error(`the recipe uses ${whole}, which the nucleus would not know`);
    return value;
  });
}

function runScript(script, cwd, env) {
  const child = killOnExit(spawn('sh', ['-c', script], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  return { child, output: () => output, exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
}

test('the component builds, installs and runs as the nucleus would, publishing results over IPC', { timeout: 600_000 }, async () => {
  const out = tmpDir('gg-component-');
  const { zip, recipe } = build({ out, version: '9.8.7', bucket: 'test-bucket' });

  // The recipe itself
  assert.equal(recipe.ComponentVersion, '9.8.7');
  const manifest = recipe.Manifests[0];
  assert.equal(manifest.Artifacts[0].Uri, `s3://test-bucket/${recipe.ComponentName}/9.8.7/recycling-sorter.zip`);
  assert.equal(manifest.Artifacts[0].Unarchive, 'ZIP');
  const access = recipe.ComponentConfiguration.DefaultConfiguration.accessControl;
  const pubsub = Object.values(access['aws.greengrass.ipc.pubsub'])[0];
  const mqttproxy = Object.values(access['aws.greengrass.ipc.mqttproxy'])[0];
  assert.deepEqual(pubsub.operations, ['aws.greengrass#PublishToTopic'], 'least privilege: publish only');
  assert.deepEqual(mqttproxy.operations, ['aws.greengrass#PublishToIoTCore']);
  for (const policy of [pubsub, mqttproxy]) {
    assert.deepEqual(policy.resources, ['recycling/*/result', 'recycling/*/divert', 'recycling/*/camera'], 'only the flow\'s topics');
  }
  for (const name of ['SORTER_SOURCE', 'SORTER_INTERVAL_MS', 'SORTER_CAMERA_ID', 'SORTER_MIN_SCORE', 'SORTER_TOPIC_PREFIX']) {
    assert.ok(manifest.Lifecycle.Setenv[name], `configuration reaches the flow as ${name}`);
  }

  // What the nucleus does: unpack, substitute, set the environment, run the lifecycle.
  const componentRoot = tmpDir('gg-nucleus-');
  const decompressed = path.join(componentRoot, 'packages', 'artifacts-unarchived', recipe.ComponentName, recipe.ComponentVersion, 'recycling-sorter');
  fs.mkdirSync(decompressed, { recursive: true });
  execFileSync('python3', ['-c', 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])', zip, decompressed]);
  const work = path.join(componentRoot, 'work', recipe.ComponentName);
  fs.mkdirSync(work, { recursive: true });
  const photos = tmpDir('gg-photos-');
  for (const p of validationPhotos(2)) fs.symlinkSync(p.file, path.join(photos, `${p.label}-${path.basename(p.file)}`));
  const configuration = { ...recipe.ComponentConfiguration.DefaultConfiguration, source: photos, intervalMs: '300', cameraId: 'belt9' };
  const vars = { 'artifacts:decompressedPath': decompressed, 'artifacts:path': path.dirname(decompressed), 'work:path': work, 'iot:thingName': 'sorter-core-1' };
  for (const [key, value] of Object.entries(configuration)) if (typeof value === 'string') vars[`configuration:/${key}`] = value;

  const socketPath = path.join(componentRoot, 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'svcuid-of-the-component');
  await nucleus.listen();
  const env = { PATH: process.env.PATH, HOME: work, AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: socketPath, SVCUID: 'svcuid-of-the-component' };
  for (const [key, value] of Object.entries(manifest.Lifecycle.Setenv)) env[key] = substitute(value, vars);
  let run;
  try {
    const install = runScript(substitute(manifest.Lifecycle.Install.Script, vars), work, env);
    assert.equal(await install.exited, 0, `install failed:\n${install.output()}`);
    assert.match(install.output(), /onnxruntime-node, sharp, aws-crt, node-red load/);

    run = runScript(substitute(manifest.Lifecycle.Run.Script, vars), work, env);
    const deadline = Date.now() + 120_000;
    const results = () => nucleus.received.filter((r) => r.operation === 'PublishToTopic' && r.request.topic === 'recycling/belt9/result');
    while (results().length < 3) {
      if (Date.now() > deadline || run.child.exitCode !== null) throw new Error(`no results over IPC:\n${run.output().slice(-3000)}`);
      await sleep(100);
    }
    const result = results()[0].request.publishMessage.jsonMessage.message;
    assert.equal(result.camera, 'belt9');
    assert.ok(result.origin.startsWith(photos));
    assert.ok(['containers', 'fibre', 'landfill', 'review'].includes(result.bin));
    assert.ok(nucleus.received.some((r) => r.request.topic === 'recycling/belt9/divert'), 'bin decisions too');
    assert.match(run.output(), /Started flows/);
    assert.ok(!fs.existsSync(path.join(decompressed, 'flows_cred.json')), 'nothing is written into the artifact');
  } finally {
    if (run && run.child.exitCode === null) {
      run.child.kill('SIGTERM');
      await run.exited;
    }
    await nucleus.close();
  }
});
