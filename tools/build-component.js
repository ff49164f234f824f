#!/usr/bin/env node
// Builds the Greengrass component: an artifact ZIP holding Node-RED, this collection (with its model),
// the sorter flow, the launcher and the settings, installed from a lockfile for this machine's
// architecture (so the device needs no registry) and pruned to that architecture's native binaries;
// and the recipe with its version, architecture, artifact URI and access policy filled in.
//
//   node tools/build-component.js [--out greengrass/build] [--bucket my-bucket] [--version 0.1.0]
//                                 [--topic-prefix recycling]
//   node tools/build-component.js --update-lock     (after changing node-red's version or our dependencies)
//
// Layout: the nucleus unpacks an artifact NAME.zip into {artifacts:decompressedPath}/NAME/ (AWS's answer
// on re:Post: main2.zip -> {artifacts:decompressedPath}/main2/main.py), so the ZIP's entries sit at its
// root (check-install.js, run.js, node_modules/...) and the recipe runs {artifacts:decompressedPath}/recycling-sorter/run.js.
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const appTemplate = path.join(root, 'greengrass', 'app');
const pkg = require(path.join(root, 'package.json'));
const recipeTemplate = JSON.parse(fs.readFileSync(path.join(root, 'greengrass', 'recipe.json'), 'utf8'));
const component = recipeTemplate.ComponentName;
/** The artifact's name: the nucleus unpacks it into {artifacts:decompressedPath}/recycling-sorter/. */
const ARTIFACT = 'recycling-sorter';
/** Node's process.arch -> the nucleus's platform architecture. onnxruntime-node ships Linux binaries for these two only. */
const ARCHITECTURES = { x64: 'amd64', arm64: 'aarch64' };
/** What goes into the artifact from greengrass/app (package.json and the lock are used for the install). */
const APP_FILES = ['run.js', 'settings.js', 'check-install.js', 'access-policy.js', 'review-folder.js'];
/** The packed collection, under a fixed name so the committed lockfile can refer to it. */
const PACKED = 'node-red-contrib-greengrass-ml.tgz';
const SELF = `node_modules/${pkg.name}`;

const run = (cmd, cmdArgs, cwd) => execFileSync(cmd, cmdArgs, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
const npmFlags = ['--prefer-offline', '--no-audit', '--no-fund', '--no-update-notifier'];

function targetArchitecture(arch = process.arch, platform = process.platform) {
  if (platform !== 'linux' || !ARCHITECTURES[arch]) {
    throw new Error(`the component runs on Linux amd64 (x64) and aarch64 (arm64) core devices only, not ${platform}-${arch}: `
      + 'onnxruntime-node has no build for other platforms (32-bit ARM included). Build on a Linux x64 or arm64 machine.');
  }
  return ARCHITECTURES[arch];
}

/** The topics the flow publishes to, as IPC policy resources (`*` is the nucleus's glob; it also matches `/`). */
function policyResources(prefix) {
  checkTopicPrefix(prefix);
  // The nucleus reads ${c} as the literal c, so a prefix holding its wildcard characters stays literal.
  const literal = prefix.replace(/[*?$]/g, (c) => '${' + c + '}');
  return ['result', 'divert', 'camera'].map((leaf) => `${literal}/*/${leaf}`);
}

function checkTopicPrefix(prefix) {
  if (typeof prefix !== 'string' || !prefix.trim()) throw new Error('the topic prefix is empty');
  if (/[+#\u0000]/.test(prefix) || prefix.startsWith('$')) throw new Error(`topic prefix "${prefix}": no + # NUL, and no leading $`);
}

/** Copies the committed package.json and lockfile, packs this collection beside them. */
function stageApp(app) {
  fs.mkdirSync(app, { recursive: true });
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', app], root))[0].filename;
  fs.renameSync(path.join(app, packed), path.join(app, PACKED));
  const appPkg = JSON.parse(fs.readFileSync(path.join(appTemplate, 'package.json'), 'utf8'));
  const nodeRed = require(path.join(root, 'node_modules', 'node-red', 'package.json')).version;
  if (appPkg.dependencies['node-red'] !== nodeRed) {
    console.warn(`note: the component pins node-red ${appPkg.dependencies['node-red']}; this checkout tests ${nodeRed}`);
  }
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify(appPkg, null, 2));
  // onnxruntime-node's install script downloads CUDA libraries; the CPU build is in the package.
  fs.writeFileSync(path.join(app, '.npmrc'), 'onnxruntime-node-install=skip\n');
  return appPkg;
}

/** `--update-lock`: resolves the component's dependency tree and writes greengrass/app/package-lock.json. */
function updateLock() {
  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'sorter-lock-'));
  try {
    stageApp(staging);
    run('npm', ['install', '--package-lock-only', '--omit=dev', ...npmFlags], staging);
    const lock = JSON.parse(fs.readFileSync(path.join(staging, 'package-lock.json'), 'utf8'));
    // Our own package is packed from this checkout at every build: its checksum is not pinned.
    delete lock.packages[SELF].integrity;
    fs.writeFileSync(path.join(appTemplate, 'package-lock.json'), `${JSON.stringify(lock, null, 2)}\n`);
    console.log(`wrote ${path.relative(process.cwd(), path.join(appTemplate, 'package-lock.json'))} (${Object.keys(lock.packages).length - 1} packages)`);
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/** The lockfile must still describe this checkout's dependencies, or `npm ci` would install something else. */
function checkLock(lock) {
  const semver = require(require.resolve('semver', { paths: [path.join(root, 'node_modules', 'node-red')] }));
  const entry = lock.packages[SELF];
  const stale = [];
  if (!entry) stale.push(`${pkg.name} is missing`);
  for (const [name, range] of Object.entries(pkg.dependencies ?? {})) {
    const locked = lock.packages[`${SELF}/node_modules/${name}`] ?? lock.packages[`node_modules/${name}`];
    if (!locked || !semver.satisfies(locked.version, range)) stale.push(`${name}@${range} (locked: ${locked?.version ?? 'none'})`);
    if (entry && entry.dependencies?.[name] !== range) stale.push(`${name}: the lock records ${entry.dependencies?.[name]}, package.json says ${range}`);
  }
  if (stale.length) {
    throw new Error(`greengrass/app/package-lock.json is out of date (${stale.join('; ')}): run node tools/build-component.js --update-lock and commit it`);
  }
}

/** Keeps only the target's native binaries (onnxruntime-node, aws-crt); sharp installs its platform's @img packages only. */
function prune(app, arch = process.arch) {
  const removed = [];
  const rm = (p) => {
    removed.push(path.relative(app, p));
    fs.rmSync(p, { recursive: true, force: true });
  };
  const ort = path.join(app, 'node_modules', 'onnxruntime-node', 'bin');
  for (const napi of fs.existsSync(ort) ? fs.readdirSync(ort) : []) {
    for (const platform of fs.readdirSync(path.join(ort, napi))) {
      if (platform !== 'linux') { rm(path.join(ort, napi, platform)); continue; }
      for (const a of fs.readdirSync(path.join(ort, napi, platform))) if (a !== arch) rm(path.join(ort, napi, platform, a));
    }
  }
  const crt = path.join(app, 'node_modules', 'aws-crt', 'dist', 'bin');
  // Both C libraries of the target: aws-crt picks glibc or musl on the device.
  for (const dir of fs.existsSync(crt) ? fs.readdirSync(crt) : []) if (!dir.startsWith(`linux-${arch}-`)) rm(path.join(crt, dir));
  // The browser build of aws-crt is never loaded by Node.
  if (fs.existsSync(path.join(app, 'node_modules', 'aws-crt', 'dist.browser'))) rm(path.join(app, 'node_modules', 'aws-crt', 'dist.browser'));
  const img = path.join(app, 'node_modules', '@img');
  for (const dir of fs.existsSync(img) ? fs.readdirSync(img) : []) {
    if (/^sharp-/.test(dir) && !dir.endsWith(`linux-${arch}`)) rm(path.join(img, dir));
  }
  // The component runs the sorter flow only: the counting flow's models would add ~15 MB for nothing.
  for (const counterModel of ['conveyor-detector.onnx', 'belt-crop-classifier.onnx']) {
    const file = path.join(app, 'node_modules', pkg.name, 'models', counterModel);
    if (fs.existsSync(file)) rm(file);
  }
  // Command-line links (node_modules/.bin): the component starts run.js, no package's CLI.
  for (const bin of [path.join(app, 'node_modules', '.bin')]) if (fs.existsSync(bin)) rm(bin);
  // Type declarations are for compilers, not for Node.
  if (fs.existsSync(path.join(app, 'node_modules', '@types'))) rm(path.join(app, 'node_modules', '@types'));
  // Node-RED's palette installer runs the npm it depends on; the component disables palette installs
  // (settings.js), and Node-RED only resolves npm/package.json when it loads: keep that file alone.
  const npm = path.join(app, 'node_modules', 'npm');
  if (fs.existsSync(path.join(npm, 'bin'))) {
    for (const entry of fs.readdirSync(npm)) if (entry !== 'package.json') fs.rmSync(path.join(npm, entry), { recursive: true, force: true });
    removed.push('node_modules/npm (all but package.json)');
  }
  // Source maps and declarations inside packages are never loaded.
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/\.(map|d\.ts|d\.mts|d\.cts)$/.test(entry.name)) fs.rmSync(full);
    }
  };
  walk(path.join(app, 'node_modules'));
  return removed;
}

function dirBytes(dir) {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += dirBytes(full);
    else if (entry.isFile()) total += fs.statSync(full).size;
  }
  return total;
}

function build({
  out = path.join(root, 'greengrass', 'build'), version = pkg.version, bucket = 'REPLACE-WITH-YOUR-BUCKET',
  topicPrefix = recipeTemplate.ComponentConfiguration.DefaultConfiguration.topicPrefix, quiet = false,
} = {}) {
  const architecture = targetArchitecture();
  const resources = policyResources(topicPrefix);
  out = path.resolve(out);
  const lock = JSON.parse(fs.readFileSync(path.join(appTemplate, 'package-lock.json'), 'utf8'));
  checkLock(lock);
  const app = fs.mkdtempSync(path.join(os.tmpdir(), 'sorter-component-'));
  try {
    stageApp(app);
    fs.writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify(lock, null, 2));
    run('npm', ['ci', '--omit=dev', ...npmFlags], app);
    fs.rmSync(path.join(app, PACKED));
    fs.rmSync(path.join(app, '.npmrc'));
    const removed = prune(app);
    for (const f of APP_FILES) fs.copyFileSync(path.join(appTemplate, f), path.join(app, f));
    fs.copyFileSync(path.join(root, 'flows', 'recycling-sorter.json'), path.join(app, 'flows.json'));
    // What the artifact was built for: the launcher compares it with the device and the configuration.
    fs.writeFileSync(path.join(app, 'component.json'), JSON.stringify({
      component, version, architecture, topicPrefix, nodeRed: require(path.join(app, 'node_modules', 'node-red', 'package.json')).version,
    }, null, 2));
    const unpackedBytes = dirBytes(app);

    const artifactDir = path.join(out, 'artifacts', component, version);
    fs.mkdirSync(artifactDir, { recursive: true });
    const zip = path.join(artifactDir, `${ARTIFACT}.zip`);
    fs.rmSync(zip, { force: true });
    // Python's zipfile is on every machine that has Node's build tools; it stores symlinks as files
    // (the nucleus's unzip does not make symlinks either). Entries at the root: see the header.
    run('python3', ['-c', ZIP_SCRIPT, zip, app]);

    const recipe = JSON.parse(JSON.stringify(recipeTemplate)
      .replace('{COMPONENT_VERSION}', version)
      .replace('{ARCHITECTURE}', architecture)
      .replace('{ARTIFACT_URI}', `s3://${bucket}/${component}/${version}/${ARTIFACT}.zip`));
    const defaults = recipe.ComponentConfiguration.DefaultConfiguration;
    defaults.topicPrefix = topicPrefix;
    for (const policy of Object.values(defaults.accessControl['aws.greengrass.ipc.pubsub'])) policy.resources = resources;
    const recipeDir = path.join(out, 'recipes');
    fs.mkdirSync(recipeDir, { recursive: true });
    const recipeFile = path.join(recipeDir, `${component}-${version}.json`);
    fs.writeFileSync(recipeFile, JSON.stringify(recipe, null, 2));
    const zipBytes = fs.statSync(zip).size;
    if (!quiet) {
      console.log(`artifact: ${path.relative(process.cwd(), zip)} (${(zipBytes / 1048576).toFixed(1)} MiB zipped, `
        + `${(unpackedBytes / 1048576).toFixed(0)} MiB unpacked, linux-${architecture}; ${removed.length} other-platform binary folders left out)`);
      console.log(`recipe:   ${path.relative(process.cwd(), recipeFile)} (topics granted: ${resources.join(', ')})`);
    }
    return { zip, recipeFile, recipe, zipBytes, unpackedBytes, removed };
  } finally {
    fs.rmSync(app, { recursive: true, force: true });
  }
}

const ZIP_SCRIPT = `
import os, sys, zipfile
target, base = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            if os.path.islink(full) and not os.path.exists(full):
                continue
            z.write(full, os.path.relpath(full, base))
`;

if (require.main === module) {
  const { option, flag } = require('./cli');
  try {
    if (flag('update-lock')) updateLock();
    else build({ out: option('out'), version: option('version'), bucket: option('bucket'), topicPrefix: option('topic-prefix') });
  } catch (err) {
    console.error(`build-component: ${err.message}`);
    process.exit(1);
  }
}
module.exports = { build, prune, policyResources, targetArchitecture, ARTIFACT };
