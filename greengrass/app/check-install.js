// Install step of the component (and again at each start, from run.js): fail early, with a clear
// message, when this device cannot run the artifact: Node.js too old, another architecture or C library
// than the artifact was built for, no ffmpeg for a live camera, work folders not writable.
//
// The nucleus runs lifecycle scripts as the component's user through `sudo`, whose secure_path decides
// which `node` and `ffmpeg` are found: set the `nodePath` configuration key to the node to use.
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { sorterCameras } = require('./access-policy');

const MIN_NODE_MAJOR = 20;
/** Sources that ml-camera reads through ffmpeg (README: RTSP cameras and USB/V4L2 devices). */
const LIVE_SOURCE = /^(rtsps?:\/\/|\/dev\/video|\/dev\/v4l\/)/i;

function checkInstall({ modules = true, env = process.env } = {}) {
  const problems = [];
  const where = `${process.platform}-${process.arch}, Node ${process.version} at ${process.execPath}`;
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) {
    problems.push(`Node.js ${process.version} is too old (${MIN_NODE_MAJOR} or newer needed): install it where the component's user finds it `
      + '(sudo\'s secure_path: /usr/local/bin or /usr/bin), or set the component\'s nodePath configuration to its full path');
  }
  let built;
  try {
    built = JSON.parse(fs.readFileSync(path.join(__dirname, 'component.json'), 'utf8'));
  } catch {
    built = undefined;
  }
  const arch = { x64: 'amd64', arm64: 'aarch64' }[process.arch] ?? process.arch;
  if (built && (process.platform !== 'linux' || built.architecture !== arch)) {
    problems.push(`this artifact was built for linux-${built.architecture}, but the device is ${where}: build it on a machine of the device's architecture`);
  }
  if (modules && !problems.length) {
    for (const name of ['onnxruntime-node', 'sharp', 'aws-crt', 'node-red']) {
      try {
        require(require.resolve(name, { paths: [__dirname] }));
      } catch (err) {
        problems.push(`${name} cannot load on this device (${where}): ${err.message}`);
      }
    }
  }
  // Every camera of SORTER_CAMERAS, or the one of SORTER_SOURCE.
  const sources = sorterCameras(env).map((c) => c.source);
  const live = sources.filter((source) => LIVE_SOURCE.test(source));
  if (live.length) {
    try {
      execFileSync('ffmpeg', ['-hide_banner', '-version'], { stdio: 'ignore', timeout: 10_000, env: { ...process.env, PATH: env.PATH ?? '' } });
    } catch (err) {
      problems.push(`the camera source${live.length > 1 ? 's' : ''} ${live.join(', ')} ${live.length > 1 ? 'are' : 'is'} read through ffmpeg, which cannot run here (${err.code ?? err.message}; PATH=${env.PATH}): `
        + 'install it (apt-get install ffmpeg)');
    }
  }
  for (const source of sources.filter((s) => /^\/dev\/(video|v4l\/)/.test(s))) {
    try {
      fs.accessSync(source, fs.constants.R_OK | fs.constants.W_OK);
    } catch (err) {
      problems.push(`the camera ${source} cannot be opened by this user (${err.code}): add the component's user to the video group (sudo usermod -a -G video ggc_user)`);
    }
  }
  for (const key of ['SORTER_USER_DIR', 'SORTER_SPOOL_DIR', 'SORTER_REVIEW_DIR']) {
    const dir = env[key];
    if (!dir) continue;
    try {
      fs.mkdirSync(dir, { recursive: true });
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (err) {
      problems.push(`${key} ${dir} is not writable by this user (${err.code ?? err.message})`);
    }
  }
  return problems;
}

if (require.main === module) {
  const problems = checkInstall();
  if (problems.length) {
    for (const p of problems) console.error(`recycling sorter: ${p}`);
    process.exit(1);
  }
  console.log(`recycling sorter: Node ${process.version}, onnxruntime-node, sharp, aws-crt, node-red load on ${process.platform}-${process.arch}`);
}
module.exports = { checkInstall, LIVE_SOURCE, MIN_NODE_MAJOR };
