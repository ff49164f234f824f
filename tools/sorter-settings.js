// Node-RED settings for `npm start`: the sorter flow (or SORTER_FLOW's) from this checkout, editor on port 1880.
const path = require('path');
const { userFlowFile } = require('./sorter-flows');

module.exports = {
  uiPort: Number(process.env.PORT) || 1880,
  // The editor has no login here: only this machine reaches it unless HOST says otherwise
  // (e.g. HOST=0.0.0.0 behind a firewall, after setting adminAuth).
  uiHost: process.env.HOST || '127.0.0.1',
  flowFile: userFlowFile(process.env),
  flowFilePretty: true,
  // Unset, Node-RED generates a random key once and keeps it in the user directory; a fixed key
  // in a public repository would protect nothing.
  ...(process.env.NODE_RED_CREDENTIAL_SECRET ? { credentialSecret: process.env.NODE_RED_CREDENTIAL_SECRET } : {}),
  userDir: process.env.SORTER_USER_DIR || path.resolve(__dirname, '..', '.node-red-data'),
  logging: { console: { level: process.env.NODE_RED_LOG_LEVEL || 'info', metrics: false, audit: false } },
  editorTheme: { projects: { enabled: false }, tours: false },
  // No calls home from a plant floor; users can opt in from the editor's settings.
  telemetry: { enabled: false },
  functionExternalModules: false,
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
