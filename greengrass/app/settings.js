// Node-RED settings of the Greengrass component (loaded by run.js): state in the component's work
// folder; the sorter flow read from the artifact, or, in editor mode, a copy in the work folder that the
// editor saves to, behind the login given in the configuration (`editorAdminAuth`).
const path = require('path');

const editor = process.env.SORTER_EDITOR === 'true';
const userDir = process.env.SORTER_USER_DIR || path.join(__dirname, 'data');

/** Node-RED's adminAuth from the component configuration (a JSON object, as the nucleus interpolates objects). */
function adminAuth(text) {
  let auth;
  try {
    auth = JSON.parse(text ?? '');
  } catch {
    auth = undefined;
  }
  const users = Array.isArray(auth?.users) ? auth.users : [];
  const valid = auth?.type === 'credentials' && users.length > 0
    && users.every((u) => typeof u?.username === 'string' && u.username && /^\$2[aby]\$\d\d\$/.test(String(u.password)));
  if (!valid) {
    throw new Error('the editor is on (editor: "true") but editorAdminAuth gives no login: set it to '
      + '{"type":"credentials","users":[{"username":"admin","password":"<bcrypt hash>","permissions":"*"}]} '
      + '(hash with: npx node-red admin hash-pw); the editor never runs without one, since it holds the component\'s IPC token');
  }
  return { type: 'credentials', users };
}

module.exports = {
  userDir,
  flowFile: editor ? path.join(userDir, 'flows.json') : path.join(__dirname, 'flows.json'),
  flowFilePretty: true,
  credentialSecret: process.env.NODE_RED_CREDENTIAL_SECRET || false,
  uiPort: Number(process.env.PORT) || 1880,
  uiHost: process.env.HOST || '127.0.0.1',
  httpAdminRoot: editor ? '/' : false,
  httpNodeRoot: editor ? '/' : false,
  disableEditor: !editor,
  adminAuth: editor ? adminAuth(process.env.SORTER_ADMIN_AUTH) : undefined,
  logging: { console: { level: process.env.NODE_RED_LOG_LEVEL || 'info', metrics: false, audit: false } },
  // palette.editable false: no palette installs, and Node-RED does not look for npm at start.
  editorTheme: { projects: { enabled: false }, tours: false, palette: { editable: false } },
  // No calls home from a plant floor; users can opt in from the editor's settings.
  telemetry: { enabled: false },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
  // The editor's live view of ml-annotate nodes (thumbnails of annotated frames): off in the component
  // unless its configuration sets liveView to "on" (SORTER_LIVE_VIEW), whatever the nodes' checkboxes say.
  mlAnnotateLiveView: /^(on|true)$/i.test(process.env.SORTER_LIVE_VIEW || ''),
  /** Read by run.js (Node-RED ignores unknown settings). */
  sorterEditor: editor,
};
