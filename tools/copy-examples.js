// Node-RED offers a module's examples/ folder under Import > Examples; flows/ is the one source,
// so the build copies it there (examples/ is generated and not committed).
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const from = path.join(root, 'flows');
const to = path.join(root, 'examples');
fs.rmSync(to, { recursive: true, force: true });
fs.mkdirSync(to, { recursive: true });
for (const file of fs.readdirSync(from).filter((f) => f.endsWith('.json'))) {
  fs.copyFileSync(path.join(from, file), path.join(to, file));
}
