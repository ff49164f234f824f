// Node-RED settings for `npm start`: the sorter flow from this checkout, editor on port 1880.
const path = require('path');

module.exports = {
  uiPort: Number(process.env.PORT) || 1880,
  uiHost: process.env.HOST || '0.0.0.0',
  flowFile: 'flows.json',
  flowFilePretty: true,
  // A fixed key keeps stored credentials readable across restarts of this demo user directory.
  credentialSecret: process.env.NODE_RED_CREDENTIAL_SECRET || 'recycling-sorter-demo',
  userDir: process.env.SORTER_USER_DIR || path.resolve(__dirname, '..', '.node-red-data'),
  logging: { console: { level: process.env.NODE_RED_LOG_LEVEL || 'info', metrics: false, audit: false } },
  editorTheme: { projects: { enabled: false }, tours: false },
  // No calls home from a plant floor; users can opt in from the editor's settings.
  telemetry: { enabled: false },
  functionExternalModules: false,
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
