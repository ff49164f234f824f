// Run step of the Greengrass component: Node-RED embedded in this process, so that the component's
// state tells the truth and its shutdown fits the nucleus's grace period.
//
// - Exits non-zero when Node-RED or the flow cannot start (the nucleus then shows the component ERRORED
//   and restarts it, BROKEN after repeated failures), when the configuration cannot work (topics the
//   access policy does not grant, the editor without a login, a live camera without ffmpeg), and when
//   the nucleus refuses the IPC token (restarted, the component gets a fresh one).
// - On SIGTERM (the nucleus's stop; SIGKILL follows 5 s later) it stops the flows (cameras' ffmpeg,
//   model workers, the spool's last write) within STOP_BUDGET_MS and exits.
// - Keeps the review folder under its count and size limits.
const fs = require('fs');
const http = require('http');
const path = require('path');
const { checkInstall } = require('./check-install');
const { checkPublishGrants } = require('./access-policy');
const { ReviewFolderLimiter } = require('./review-folder');

/** The nucleus sends SIGKILL 5 s after SIGTERM: stop well inside that. */
const STOP_BUDGET_MS = 3500;
/** The flows must have started by then, or the component is not working. */
const START_DEADLINE_MS = Number(process.env.SORTER_START_DEADLINE_MS) || 120_000;
/** Emitted by greengrass-connection when the nucleus refuses the IPC token. */
const TOKEN_REJECTED_EVENT = 'greengrass:ipc-token-rejected';

const fail = (text, code = 1) => {
  console.error(`recycling sorter: ${text}`);
  process.exit(code);
};

function main() {
  const problems = checkInstall({ modules: false });
  if (problems.length) fail(problems.join('\n'));
  const grants = checkPublishGrants(process.env);
  if (grants.error) fail(grants.error);
  if (grants.note) console.log(`recycling sorter: ${grants.note}`);

  let settings;
  try {
    settings = require('./settings');
  } catch (err) {
    fail(err.message);
  }
  fs.mkdirSync(settings.userDir, { recursive: true });
  if (settings.sorterEditor && !fs.existsSync(settings.flowFile)) {
    // Editor mode edits a copy in the work folder: the artifact is read-only and replaced by the next version.
    fs.copyFileSync(path.join(__dirname, 'flows.json'), settings.flowFile);
    console.log(`recycling sorter: editor mode; the flow is ${settings.flowFile} (copied from the artifact)`);
  }

  const review = new ReviewFolderLimiter(process.env.SORTER_REVIEW_DIR, {
    maxFiles: Number(process.env.SORTER_REVIEW_MAX_FILES) || 1000,
    maxBytes: (Number(process.env.SORTER_REVIEW_MAX_MB) || 200) * 1024 * 1024,
    onError: (err) => console.warn(`recycling sorter: review folder: ${err.message}`),
  });

  const RED = require('node-red');
  let server = null;
  let app = null;
  if (settings.sorterEditor) {
    const express = require(require.resolve('express', { paths: [path.dirname(require.resolve('node-red/package.json'))] }));
    app = express();
    server = http.createServer(app);
  }
  RED.init(server, settings);
  if (app) {
    app.use(settings.httpAdminRoot, RED.httpAdmin);
    app.use(settings.httpNodeRoot, RED.httpNode);
  }

  let stopping = null;
  const stop = (reason, code) => {
    if (stopping) return stopping;
    const began = Date.now();
    console.log(`recycling sorter: stopping (${reason})`);
    review.stop();
    const forced = setTimeout(() => {
      console.error(`recycling sorter: Node-RED did not stop within ${STOP_BUDGET_MS} ms; exiting anyway`);
      process.exit(code || 1);
    }, STOP_BUDGET_MS);
    stopping = RED.stop()
      .catch((err) => console.error(`recycling sorter: stopping Node-RED: ${err.message}`))
      .then(() => new Promise((resolve) => (server ? server.close(() => resolve()) : resolve())))
      .then(() => {
        clearTimeout(forced);
        console.log(`recycling sorter: stopped in ${Date.now() - began} ms`);
        process.exit(code);
      });
    return stopping;
  };
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on(TOKEN_REJECTED_EVENT, (reason) => {
    console.error(`recycling sorter: the nucleus refused the component's IPC token (${reason}); exiting so that it restarts the component with a fresh one`);
    stop('IPC token refused', 1);
  });

  // Health: the flows must start, without missing node types or modules.
  const startTimer = setTimeout(() => {
    console.error(`recycling sorter: the flows did not start within ${START_DEADLINE_MS / 1000} s`);
    stop('no start', 1);
  }, START_DEADLINE_MS);
  RED.events.on('runtime-event', (event) => {
    const payload = event?.id === 'runtime-state' ? event.payload : undefined;
    if (payload?.error && payload.type === 'warning') {
      const detail = payload.types ?? payload.modules ?? payload.text;
      console.error(`recycling sorter: the flow cannot start: ${payload.error} ${JSON.stringify(detail)}`);
      clearTimeout(startTimer);
      stop(payload.error, 1);
    }
  });
  RED.events.on('flows:started', () => {
    clearTimeout(startTimer);
    review.start();
  });

  const listening = server
    ? new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(settings.uiPort, settings.uiHost, resolve);
    })
    : Promise.resolve();
  listening
    .then(() => RED.start())
    .then(() => {
      if (server) console.log(`recycling sorter: editor on http://${settings.uiHost}:${settings.uiPort}/ (login required)`);
    })
    .catch((err) => {
      clearTimeout(startTimer);
      console.error(`recycling sorter: Node-RED cannot start: ${err?.stack ?? err}`);
      stop('start failed', 1);
    });
}

main();
