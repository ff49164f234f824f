// Node-RED settings of the Greengrass component: the sorter flow from the artifact, state in the
// component's work folder, the editor off unless the configuration turns it on.
const path = require('path');

const editor = process.env.SORTER_EDITOR === 'true';

module.exports = {
  userDir: process.env.SORTER_USER_DIR || path.join(__dirname, 'data'),
  flowFile: path.join(__dirname, 'flows.json'),
  flowFilePretty: true,
  credentialSecret: process.env.NODE_RED_CREDENTIAL_SECRET || false,
  uiPort: Number(process.env.PORT) || 1880,
  uiHost: process.env.HOST || '127.0.0.1',
  httpAdminRoot: editor ? '/' : false,
  httpNodeRoot: editor ? '/' : false,
  disableEditor: !editor,
  logging: { console: { level: process.env.NODE_RED_LOG_LEVEL || 'info', metrics: false, audit: false } },
  editorTheme: { projects: { enabled: false }, tours: false },
  // No calls home from a plant floor; users can opt in from the editor's settings.
  telemetry: { enabled: false },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
