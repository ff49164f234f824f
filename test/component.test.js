// The Greengrass component, deployed the way the nucleus deploys it. Every step below follows AWS's
// documentation or the nucleus's own source (aws-greengrass-nucleus), not what our build happens to do:
//
// - Artifacts: the nucleus unpacks NAME.zip into {artifacts:decompressedPath}/NAME/ (AWS's answer on
//   re:Post "unzip component not working": main2.zip -> {artifacts:decompressedPath}/main2/main.py). Its
//   Unarchiver (componentmanager/Unarchiver.java) uses java.util.zip: no symlinks, no file modes from the
//   ZIP. The recipe's Permission then sets the files' modes (component recipe reference, Artifacts >
//   Permission: Read/Execute NONE, OWNER or ALL); OWNER is the component's user; nothing is writable.
// - Variables (componentmanager/KernelConfigResolver.java, replace/lookupConfigurationValueForComponent):
//   {configuration:/json/pointer} gives a value's text, an object's JSON; a missing key or an unknown
//   namespace is left in place (logged). {artifacts:path}, {artifacts:decompressedPath}, {work:path},
//   {iot:thingName}. Setenv applies to every lifecycle step.
// - Users (util/platforms/unix/UnixPlatform.java, SudoDecorator): each step runs as
//   `sudo -n -E -H -u <user> -g <group> -- sh -c '<script>'`: the environment is kept (-E), HOME is the
//   user's (-H), and sudo's secure_path replaces PATH (Debian's default below). Here: `nobody`.
// - Configuration changes (lifecycle GenericExternalService config subscriber): a change under the Install
//   step reinstalls; a change to the lifecycle or Setenv restarts Run with the new environment.
// - Stop (util/platforms/Exec.java close, UnixPlatform.killProcessAndChildren): SIGTERM to the processes
//   under the step's process, up to 5 s each to exit, then SIGKILL for all that remain.
// - IPC: the socket is read/write for all (Permissions.setIpcSocketPermission); the component gets SVCUID and
//   AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT; the test nucleus (fixtures/ipc-server.js) enforces
//   the component's accessControl from its configuration.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { ROOT, tmpDir, validationPhotos, sleep, killOnExit, freePort } = require('./helpers');
const { build, policyResources, targetArchitecture } = require('../tools/build-component');
const { FakeNucleusIpc } = require('./fixtures/ipc-server');

/** sudo's secure_path as Debian and Ubuntu ship it: the PATH every lifecycle step sees. */
const SECURE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const USER = { name: 'nobody', uid: 65534, gid: 65534, home: '/nonexistent' };
/** Issue 11: what every device of a fleet downloads. */
const MAX_ARTIFACT_MIB = 60;
const TOKEN = 'svcuid-of-the-component';

function deepMerge(base, update) {
  if (!update || typeof update !== 'object' || Array.isArray(update)) return update;
  const out = { ...(base && typeof base === 'object' && !Array.isArray(base) ? base : {}) };
  for (const [k, v] of Object.entries(update)) out[k] = v && typeof v === 'object' && !Array.isArray(v) ? deepMerge(out[k], v) : v;
  return out;
}

function pointer(config, key) {
  let node = config;
  for (const part of key.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))) {
    if (node === null || typeof node !== 'object' || !(part in node)) return undefined;
    node = node[part];
  }
  return node;
}

/** KernelConfigResolver's interpolation of one lifecycle string. */
function interpolate(text, system, config) {
  return text.replace(/\{([\w.-]+):([^}]+)\}/g, (whole, namespace, key) => {
    if (namespace === 'configuration') {
      const value = pointer(config, key);
      if (value === undefined) return whole;
      return value !== null && typeof value === 'object' ? JSON.stringify(value) : String(value);
    }
    return system[`${namespace}:${key}`] ?? whole;
  });
}

/** Every path under dir (what the nucleus unpacked, to see that nothing is added). */
function listTree(dir) {
  return fs.readdirSync(dir, { recursive: true }).map((p) => path.join(dir, String(p)));
}

function descendants(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch { /* gone */ }
  }
  const out = [];
  const walk = (p) => { for (const c of children.get(p) ?? []) { out.push(c); walk(c); } };
  walk(pid);
  return out;
}

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
};

/** The nucleus's part, for one component: artifacts, configuration, lifecycle steps as the component's user. */
class TestNucleus {
  constructor({ root, recipe, zip }) {
    this.root = root;
    this.recipe = recipe;
    this.manifest = recipe.Manifests[0];
    this.config = JSON.parse(JSON.stringify(recipe.ComponentConfiguration.DefaultConfiguration));
    const name = recipe.ComponentName;
    const version = recipe.ComponentVersion;
    this.artifactsPath = path.join(root, 'packages', 'artifacts', name, version);
    this.decompressedPath = path.join(root, 'packages', 'artifacts-unarchived', name, version);
    this.workPath = path.join(root, 'work', name);
    this.socketPath = path.join(root, 'ipc.socket');
    this.zip = zip;
    this.run = undefined;
  }

  /** Downloads (copies) and unpacks the artifact as the nucleus does, with the recipe's Permission. */
  prepareArtifacts() {
    const artifact = this.manifest.Artifacts[0];
    const file = path.basename(new URL(artifact.Uri).pathname);
    fs.mkdirSync(this.artifactsPath, { recursive: true });
    fs.copyFileSync(this.zip, path.join(this.artifactsPath, file));
    assert.equal(artifact.Unarchive, 'ZIP');
    const into = path.join(this.decompressedPath, file.replace(/\.zip$/i, ''));
    fs.mkdirSync(into, { recursive: true });
    execFileSync('python3', ['-c', 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])', path.join(this.artifactsPath, file), into]);
    const { Read = 'OWNER', Execute = 'NONE' } = artifact.Permission ?? {};
    const bits = (level, bit) => ({ NONE: 0, OWNER: bit << 6, ALL: (bit << 6) | (bit << 3) | bit })[level];
    const fileMode = bits(Read, 4) | bits(Execute, 1);
    const dirMode = bits(Read, 4) | bits(Read, 1);
    assert.ok(fileMode & 0o400, 'the component can read its artifact');
    for (const dir of [this.artifactsPath, this.decompressedPath]) {
      execFileSync('chown', ['-R', `${USER.uid}:${USER.gid}`, dir]);
      execFileSync('find', [dir, '-type', 'f', '-exec', 'chmod', fileMode.toString(8), '{}', '+']);
      execFileSync('find', [dir, '-type', 'd', '-exec', 'chmod', dirMode.toString(8), '{}', '+']);
    }
    // {work:path}: the component's own folder (its user's, 0700) under the nucleus's work folder.
    fs.mkdirSync(path.dirname(this.workPath), { recursive: true, mode: 0o755 });
    fs.mkdirSync(this.workPath, { mode: 0o700 });
    fs.chownSync(this.workPath, USER.uid, USER.gid);
    this.unpacked = new Set(listTree(this.decompressedPath));
  }

  merge(update) {
    this.config = deepMerge(this.config, update);
  }

  lifecycle() {
    const system = {
      'artifacts:path': this.artifactsPath,
      'artifacts:decompressedPath': this.decompressedPath,
      'work:path': this.workPath,
      'iot:thingName': 'sorter-core-1',
      'kernel:rootPath': this.root,
    };
    const setenv = {};
    for (const [k, v] of Object.entries(this.manifest.Lifecycle.Setenv)) setenv[k] = interpolate(v, system, this.config);
    const install = interpolate(this.manifest.Lifecycle.Install.Script, system, this.config);
    const run = interpolate(this.manifest.Lifecycle.Run.Script, system, this.config);
    for (const [where, text] of [['Install', install], ['Run', run], ...Object.entries(setenv)]) {
      assert.doesNotMatch(text, /\{[\w.-]+:[^}]+\}/, `${where}: a recipe variable the nucleus cannot resolve is left in place`);
    }
    // Every file the scripts name must exist where the nucleus put it.
    for (const script of [install, run]) {
      for (const [, p] of script.matchAll(/"(\/[^"]+)"/g)) assert.ok(fs.existsSync(p), `the recipe runs ${p}, which does not exist`);
    }
    return { setenv, install, run };
  }

  env(setenv) {
    return {
      // Exec's defaults (PATH, HOME) are replaced by sudo: secure_path, and the user's home (-H).
      PATH: SECURE_PATH, HOME: USER.home, USER: USER.name, LOGNAME: USER.name, SHELL: '/bin/sh',
      SVCUID: this.token ?? TOKEN,
      AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: this.socketPath,
      AWS_IOT_THING_NAME: 'sorter-core-1', AWS_REGION: 'eu-west-1',
      ...setenv,
    };
  }

  /** One lifecycle step: `sh -c script` as the component's user (sudo -E -H -u -g, with secure_path). */
  step(script, setenv) {
    const child = killOnExit(spawn('sh', ['-c', script], {
      cwd: this.workPath, env: this.env(setenv), uid: USER.uid, gid: USER.gid, stdio: ['ignore', 'pipe', 'pipe'],
    }));
    let output = '';
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    const exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => resolve(code ?? signal));
      child.once('error', (err) => { output += `\n${err.stack}`; resolve(`spawn error ${err.code}`); });
    });
    return { child, output: () => output, exited };
  }

  async install() {
    const { setenv, install } = this.lifecycle();
    const step = this.step(install, setenv);
    const timeout = (this.manifest.Lifecycle.Install.Timeout ?? 120) * 1000;
    const code = await Promise.race([step.exited, sleep(timeout).then(() => 'timeout')]);
    this.installed = install;
    return { code, output: step.output() };
  }

  startRun() {
    const { setenv, run } = this.lifecycle();
    this.running = { run, setenv };
    this.run = this.step(run, setenv);
    return this.run;
  }

  /** Exec.close(): SIGTERM to the processes under the step, up to 5 s, then SIGKILL. */
  async stopRun() {
    const step = this.run;
    if (!step || step.child.exitCode !== null || step.child.signalCode !== null) return { ms: 0, forced: false, code: step && (step.child.exitCode ?? step.child.signalCode) };
    const began = Date.now();
    const pids = [step.child.pid, ...descendants(step.child.pid)];
    for (const pid of pids) try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
    let forced = false;
    while (pids.some(alive)) {
      if (Date.now() - began > 5000) {
        forced = true;
        for (const pid of pids) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
        break;
      }
      await sleep(20);
    }
    const code = await step.exited;
    return { ms: Date.now() - began, forced, code };
  }

  /** A deployment's configuration merge: reinstall when Install changed, restart Run when Run or Setenv did. */
  async deployMerge(update) {
    this.merge(update);
    const next = this.lifecycle();
    const result = { reinstalled: false, restarted: false };
    if (next.install !== this.installed) {
      await this.stopRun();
      const { code, output } = await this.install();
      assert.equal(code, 0, `reinstall failed:\n${output}`);
      result.reinstalled = true;
    }
    if (result.reinstalled || next.run !== this.running.run || JSON.stringify(next.setenv) !== JSON.stringify(this.running.setenv)) {
      result.stop = await this.stopRun();
      this.startRun();
      result.restarted = true;
    }
    return result;
  }
}

function photoFolder(perClass) {
  const dir = tmpDir('gg-photos-');
  fs.chmodSync(dir, 0o755);
  for (const p of validationPhotos(perClass)) fs.copyFileSync(p.file, path.join(dir, `${p.label}-${path.basename(p.file)}`));
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
  return dir;
}

async function waitFor(predicate, ms, what, step) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms / 1000} s:\n${step?.output().slice(-4000) ?? ''}`);
    if (step && step.child.exitCode !== null) throw new Error(`Run exited (${step.child.exitCode}) before ${what}:\n${step.output().slice(-4000)}`);
    await sleep(100);
  }
}

test('the policy resources follow the topic prefix; only amd64 and aarch64 are built', () => {
  assert.deepEqual(policyResources('plant7/line2'), ['plant7/line2/*/result', 'plant7/line2/*/divert', 'plant7/line2/*/camera']);
  assert.deepEqual(policyResources('a*b'), ['a${*}b/*/result', 'a${*}b/*/divert', 'a${*}b/*/camera'], 'the nucleus reads ${c} as a literal c');
  assert.throws(() => policyResources('a/#'), /no \+ # NUL/);
  assert.equal(targetArchitecture('x64', 'linux'), 'amd64');
  assert.equal(targetArchitecture('arm64', 'linux'), 'aarch64');
  assert.throws(() => targetArchitecture('arm', 'linux'), /amd64 \(x64\) and aarch64 \(arm64\) core devices only, not linux-arm/);
  assert.throws(() => targetArchitecture('x64', 'darwin'), /not darwin-x64/);
});

test('the start-up policy check covers every camera of a `cameras` list', () => {
  const { checkPublishGrants } = require('../greengrass/app/access-policy');
  const recipe = JSON.parse(fs.readFileSync(path.join(ROOT, 'greengrass', 'recipe.json'), 'utf8'));
  const env = {
    SORTER_TRANSPORT: 'ipc', SVCUID: 't', AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: '/s',
    SORTER_ACCESS_CONTROL: JSON.stringify(recipe.ComponentConfiguration.DefaultConfiguration.accessControl),
    SORTER_CAMERAS: 'belt1=/data/a,belt2=rtsp://10.0.0.21/stream1',
  };
  assert.match(checkPublishGrants(env).note, /recycling\/belt1\/result.*recycling\/belt2\/camera/);
  const narrow = { 'aws.greengrass.ipc.pubsub': { p: { operations: ['aws.greengrass#PublishToTopic'], resources: ['recycling/belt1/*'] } } };
  assert.match(checkPublishGrants({ ...env, SORTER_ACCESS_CONTROL: JSON.stringify(narrow) }).error, /publishes to recycling\/belt2\/result, recycling\/belt2\/divert, recycling\/belt2\/camera, which accessControl does not grant/);
  assert.equal(recipe.ComponentConfiguration.DefaultConfiguration.cameras, '');
  assert.equal(recipe.Manifests[0].Lifecycle.Setenv.SORTER_CAMERAS, '{configuration:/cameras}');
});

test('Install checks ffmpeg for a live camera where the component\'s user looks for it, and writable work folders', () => {
  const { checkInstall } = require('../greengrass/app/check-install');
  const noFfmpeg = checkInstall({ modules: false, env: { SORTER_SOURCE: 'rtsp://10.0.0.21/stream1', PATH: '/nonexistent' } });
  assert.equal(noFfmpeg.length, 1);
  assert.match(noFfmpeg[0], /rtsp:\/\/10\.0\.0\.21\/stream1 is read through ffmpeg, which cannot run here.*apt-get install ffmpeg/);
  assert.deepEqual(checkInstall({ modules: false, env: { SORTER_SOURCE: '/photos', PATH: '/nonexistent' } }), [], 'a folder needs no ffmpeg');
  const camera = checkInstall({ modules: false, env: { SORTER_SOURCE: '/dev/video97', PATH: SECURE_PATH } });
  assert.ok(camera.some((p) => /\/dev\/video97 cannot be opened by this user.*video group/.test(p)), camera.join('\n'));
  // A list of cameras (the component's cameras key) is checked camera by camera.
  const listed = checkInstall({ modules: false, env: { SORTER_CAMERAS: 'belt1=rtsp://10.0.0.21/stream1,belt2=/dev/v4l/by-id/usb-cam-video-index0,belt3=/photos', PATH: '/nonexistent' } });
  assert.equal(listed.length, 2, listed.join('\n'));
  assert.match(listed[0], /sources rtsp:\/\/10\.0\.0\.21\/stream1, \/dev\/v4l\/by-id\/usb-cam-video-index0 are read through ffmpeg, which cannot run here/);
  assert.match(listed[1], /the camera \/dev\/v4l\/by-id\/usb-cam-video-index0 cannot be opened by this user \(ENOENT\)/);
  const readOnly = tmpDir('gg-ro-');
  fs.writeFileSync(path.join(readOnly, 'file'), '');
  assert.match(checkInstall({ modules: false, env: { SORTER_SPOOL_DIR: path.join(readOnly, 'file', 'spool'), PATH: SECURE_PATH } })[0], /SORTER_SPOOL_DIR .* is not writable/);
});

test('the component deploys as the nucleus deploys it: unpack, Install and Run as an unprivileged user, a configuration merge, stop', { timeout: 420_000 }, async (t) => {
  const began = Date.now();
  const out = tmpDir('gg-component-');
  const { zip, recipe, zipBytes } = build({ out, version: '9.8.7', bucket: 'test-bucket' });
  const zipMiB = zipBytes / 1048576;
  t.diagnostic(`artifact ${zipMiB.toFixed(1)} MiB zipped (build ${((Date.now() - began) / 1000).toFixed(0)} s)`);
  assert.ok(zipMiB <= MAX_ARTIFACT_MIB, `the artifact is ${zipMiB.toFixed(1)} MiB; at most ${MAX_ARTIFACT_MIB} MiB`);
  const entries = execFileSync('python3', ['-c', 'import sys, zipfile; print("\\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))', zip], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n');
  assert.ok(entries.includes('run.js') && entries.includes('check-install.js'), 'entries at the ZIP\'s root: the nucleus adds the folder');
  assert.ok(!entries.some((e) => /onnxruntime-node\/bin\/napi-v\d+\/(darwin|win32)\//.test(e)), 'no darwin/win32 onnxruntime');
  const other = process.arch === 'x64' ? 'arm64' : 'x64';
  assert.ok(!entries.some((e) => e.includes(`/linux/${other}/`) || e.includes(`aws-crt/dist/bin/linux-${other}`) || /aws-crt\/dist\/bin\/(darwin|win32)/.test(e)), 'only this architecture\'s binaries');

  // The recipe: what the nucleus and the cloud read.
  assert.equal(recipe.ComponentVersion, '9.8.7');
  assert.deepEqual(recipe.ComponentDependencies['aws.greengrass.Nucleus'], { VersionRequirement: '>=2.6.0 <3.0.0', DependencyType: 'SOFT' });
  const manifest = recipe.Manifests[0];
  assert.deepEqual(manifest.Platform, { os: 'linux', architecture: targetArchitecture() });
  assert.equal(manifest.Artifacts[0].Uri, `s3://test-bucket/${recipe.ComponentName}/9.8.7/recycling-sorter.zip`);
  const access = recipe.ComponentConfiguration.DefaultConfiguration.accessControl;
  assert.deepEqual(Object.keys(access), ['aws.greengrass.ipc.pubsub'], 'least privilege: the flow publishes to local pub/sub only');
  const [policy] = Object.values(access['aws.greengrass.ipc.pubsub']);
  assert.deepEqual(policy.operations, ['aws.greengrass#PublishToTopic']);
  assert.deepEqual(policy.resources, ['recycling/*/result', 'recycling/*/divert', 'recycling/*/camera']);

  const root = tmpDir('gg-nucleus-');
  fs.chmodSync(root, 0o755);
  const nucleusNode = execFileSync('sh', ['-c', 'command -v node || true'], { env: { PATH: SECURE_PATH }, encoding: 'utf8' }).trim();
  const nucleus = new TestNucleus({ root, recipe, zip });
  nucleus.prepareArtifacts();
  const photos = photoFolder(1);
  const morePhotos = photoFolder(2);
  // The deployment's configuration merge (README: create-deployment ... configurationUpdate.merge).
  nucleus.merge({ source: photos, intervalMs: '300', cameraId: 'belt9', ...(nucleusNode ? {} : { nodePath: process.execPath }) });
  const ipc = new FakeNucleusIpc(nucleus.socketPath, TOKEN, { accessControl: nucleus.config.accessControl });
  await ipc.listen();
  fs.chmodSync(nucleus.socketPath, 0o666);
  const results = (camera) => ipc.received.filter((r) => r.operation === 'PublishToTopic' && r.request.topic === `recycling/${camera}/result`);
  try {
    const installed = await nucleus.install();
    assert.equal(installed.code, 0, `Install failed:\n${installed.output}`);
    assert.match(installed.output, /Node v\d+.*onnxruntime-node, sharp, aws-crt, node-red load/);

    const first = nucleus.startRun();
    await waitFor(() => results('belt9').length >= 3, 120_000, 'three results over IPC', first);
    const result = results('belt9')[0].request.publishMessage.jsonMessage.message;
    assert.equal(result.camera, 'belt9');
    assert.ok(result.origin.startsWith(photos));
    assert.ok(['containers', 'fibre', 'landfill', 'review'].includes(result.bin));
    assert.ok(ipc.received.some((r) => r.request.topic === 'recycling/belt9/divert'), 'bin decisions too');
    assert.equal(ipc.refused.length, 0, `nothing refused: ${JSON.stringify(ipc.refused[0])}`);
    assert.match(first.output(), /accessControl grants PublishToTopic on recycling\/belt9\/result/);

    // A configuration merge: Setenv changes, so the nucleus restarts Run with the new environment.
    const merged = await nucleus.deployMerge({ source: morePhotos, cameraId: 'belt10' });
    assert.deepEqual([merged.reinstalled, merged.restarted], [false, true]);
    t.diagnostic(`stop for the restart: ${merged.stop.ms} ms, exit ${merged.stop.code}`);
    assert.equal(merged.stop.forced, false, `Run did not stop within 5 s of SIGTERM:\n${first.output().slice(-3000)}`);
    assert.equal(merged.stop.code, 0);
    await waitFor(() => results('belt10').length >= 2, 120_000, 'results with the new configuration', nucleus.run);
    assert.ok(results('belt10')[0].request.publishMessage.jsonMessage.message.origin.startsWith(morePhotos));

    // The nucleus's stop: SIGTERM, SIGKILL after 5 s; the component is done well before.
    const second = nucleus.run;
    const stop = await nucleus.stopRun();
    t.diagnostic(`shutdown after SIGTERM: ${stop.ms} ms`);
    assert.equal(stop.forced, false, `Run did not stop within 5 s of SIGTERM:\n${second.output().slice(-3000)}`);
    assert.equal(stop.code, 0);
    assert.ok(stop.ms < 4000, `stopped in ${stop.ms} ms`);
    assert.match(second.output(), /stopped in \d+ ms/);

    // Nothing was written into the artifact; state is in the work folder.
    const now = listTree(nucleus.decompressedPath);
    assert.deepEqual(now.filter((f) => !nucleus.unpacked.has(f)), [], 'the artifact folder is unchanged');
    assert.ok(fs.existsSync(path.join(nucleus.workPath, 'spool')), 'the spool is in {work:path}');
    assert.ok(fs.existsSync(path.join(nucleus.workPath, 'node-red')), 'Node-RED\'s user folder is in {work:path}');
  } finally {
    await nucleus.stopRun();
    await ipc.close();
  }

  // Configurations that cannot work stop the component at once, non-zero, saying why.
  const fails = async (update, pattern, what, { token } = {}) => {
    const n = new TestNucleus({ root, recipe, zip });
    Object.assign(n, { config: deepMerge(nucleus.config, update), token, installed: nucleus.installed });
    const step = n.startRun();
    const code = await Promise.race([step.exited, sleep(90_000).then(() => 'still running')]);
    await n.stopRun();
    assert.notEqual(code, 0, `${what}: Run should exit non-zero`);
    assert.notEqual(code, 'still running', `${what}: Run should exit:\n${step.output().slice(-2000)}`);
    assert.match(step.output(), pattern, what);
  };
  const check = new FakeNucleusIpc(nucleus.socketPath, TOKEN, { accessControl: nucleus.config.accessControl });
  await check.listen();
  fs.chmodSync(nucleus.socketPath, 0o666);
  try {
    await fails({ topicPrefix: 'plant7' }, /plant7\/belt10\/result, .*which accessControl does not grant.*plant7\/\*\/result/, 'a topic prefix the policy does not cover');
    await fails({ editor: 'true', editorPort: String(await freePort()) }, /editorAdminAuth gives no login/, 'the editor without a login');
    await fails({}, /refused the component's IPC token/, 'a token the nucleus refuses', { token: 'a-stale-token' });
    // Editor mode keeps its flow in {work:path}; a flow Node-RED cannot start (a missing node type) stops the component.
    const userDir = path.join(nucleus.workPath, 'node-red');
    fs.writeFileSync(path.join(userDir, 'flows.json'), JSON.stringify([{ id: 't', type: 'tab' }, { id: 'x', type: 'no-such-node', z: 't', x: 1, y: 1, wires: [] }]));
    fs.chownSync(path.join(userDir, 'flows.json'), USER.uid, USER.gid);
    const auth = { type: 'credentials', users: [{ username: 'admin', password: '$2b$08$wuAqPiKJlVN27eF5qJp.RuQYuy6ZYONW7a/UWYxDTtwKFCdB8F19y', permissions: '*' }] };
    await fails({ editor: 'true', editorPort: String(await freePort()), editorAdminAuth: auth }, /flow cannot start: missing-types .*no-such-node/, 'a flow with a missing node type');
  } finally {
    await check.close();
  }
  t.diagnostic(`component test: ${((Date.now() - began) / 1000).toFixed(0)} s`);
});

test('the review folder stays under its file count and size, the oldest frames removed first', () => {
  const { pruneFolder } = require('../greengrass/app/review-folder');
  const dir = tmpDir('gg-review-');
  const t0 = Date.now() / 1000 - 1000;
  for (let i = 0; i < 12; i++) {
    const file = path.join(dir, i % 2 ? 'glass' : 'paper', `cam1-${i}.jpg`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, Buffer.alloc(1000));
    fs.utimesSync(file, t0 + i, t0 + i);
  }
  const byCount = pruneFolder(dir, { maxFiles: 10, maxBytes: Infinity });
  assert.deepEqual(byCount.removed.map((f) => path.basename(f)), ['cam1-0.jpg', 'cam1-1.jpg']);
  const bySize = pruneFolder(dir, { maxFiles: 100, maxBytes: 7500 });
  assert.deepEqual(bySize.removed.map((f) => path.basename(f)), ['cam1-2.jpg', 'cam1-3.jpg', 'cam1-4.jpg']);
  assert.equal(bySize.count, 7);
  assert.equal(bySize.bytes, 7000);
  assert.deepEqual(pruneFolder(path.join(dir, 'missing'), { maxFiles: 1, maxBytes: 1 }).removed, [], 'no folder yet is fine');
});
