// Removes compiled files whose TypeScript source is gone (a renamed or deleted .ts), so that neither
// Node-RED nor `npm pack` ever sees a stale node.
const fs = require('fs');
const path = require('path');

const nodes = path.resolve(__dirname, '..', 'nodes');
for (const entry of fs.readdirSync(nodes, { recursive: true })) {
  const file = path.join(nodes, String(entry));
  if (file.endsWith('.js') && !fs.existsSync(`${file.slice(0, -3)}.ts`)) {
    fs.rmSync(file);
    console.log(`removed stale ${path.relative(process.cwd(), file)}`);
  }
}
