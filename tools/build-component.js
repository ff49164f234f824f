#!/usr/bin/env node
// Builds the Greengrass component: an artifact ZIP holding Node-RED, this collection (with its model),
// the sorter flow and the settings, all installed for this machine's architecture so the device needs
// no registry; and the recipe with its version, architecture and artifact URI filled in.
//
//   node tools/build-component.js [--out greengrass/build] [--bucket my-bucket] [--version 0.1.0]
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const pkg = require(path.join(root, 'package.json'));
const recipeTemplate = JSON.parse(fs.readFileSync(path.join(root, 'greengrass', 'recipe.json'), 'utf8'));
const component = recipeTemplate.ComponentName;
const ARCHITECTURES = { x64: 'amd64', arm64: 'aarch64', arm: 'arm' };
const architecture = ARCHITECTURES[process.arch] ?? process.arch;
const run = (cmd, cmdArgs, cwd) => execFileSync(cmd, cmdArgs, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

function build({ out = path.join(root, 'greengrass', 'build'), version = pkg.version, bucket = 'REPLACE-WITH-YOUR-BUCKET' } = {}) {
  out = path.resolve(out);
  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'sorter-component-'));
  const app = path.join(staging, 'recycling-sorter');
  fs.mkdirSync(app);
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', app], root))[0].filename;
  const nodeRedVersion = require(path.join(root, 'node_modules', 'node-red', 'package.json')).version;
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({
    name: 'recycling-sorter-component', version, private: true,
    dependencies: { 'node-red': nodeRedVersion, [pkg.name]: `file:./${packed}` },
  }, null, 2));
  fs.writeFileSync(path.join(app, '.npmrc'), 'onnxruntime-node-install=skip\n');
  for (const f of ['settings.js', 'check-install.js']) fs.copyFileSync(path.join(root, 'greengrass', 'app', f), path.join(app, f));
  fs.copyFileSync(path.join(root, 'flows', 'recycling-sorter.json'), path.join(app, 'flows.json'));
  run('npm', ['install', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund', '--no-update-notifier'], app);
  fs.rmSync(path.join(app, packed));

  const artifactDir = path.join(out, 'artifacts', component, version);
  fs.mkdirSync(artifactDir, { recursive: true });
  const zip = path.join(artifactDir, 'recycling-sorter.zip');
  fs.rmSync(zip, { force: true });
  // Python's zipfile is on every machine that has Node's build tools; it stores symlinks as files.
  run('python3', ['-c', ZIP_SCRIPT, zip, staging]);
  fs.rmSync(staging, { recursive: true, force: true });

  const recipe = JSON.parse(JSON.stringify(recipeTemplate)
    .replace('{COMPONENT_VERSION}', version)
    .replace('{ARCHITECTURE}', architecture)
    .replace('{ARTIFACT_URI}', `s3://${bucket}/${component}/${version}/recycling-sorter.zip`));
  const recipeDir = path.join(out, 'recipes');
  fs.mkdirSync(recipeDir, { recursive: true });
  const recipeFile = path.join(recipeDir, `${component}-${version}.json`);
  fs.writeFileSync(recipeFile, JSON.stringify(recipe, null, 2));
  console.log(`artifact: ${path.relative(process.cwd(), zip)} (${(fs.statSync(zip).size / 1048576).toFixed(0)} MiB, ${process.platform}-${architecture})`);
  console.log(`recipe:   ${path.relative(process.cwd(), recipeFile)}`);
  return { zip, recipeFile, recipe };
}

const ZIP_SCRIPT = `
import os, sys, zipfile
target, base = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED, compresslevel=6) as z:
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            z.write(full, os.path.relpath(full, base))
`;

if (require.main === module) {
  const args = process.argv.slice(2);
  const option = (name) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined);
  build({ out: option('out'), version: option('version'), bucket: option('bucket') });
}
module.exports = { build };
