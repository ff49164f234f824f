// Keeps the review folder (uncertain frames saved for people to label) under a file count and a total
// size, removing the oldest first: it lives in the component's work folder, on the volume the nucleus
// itself needs.
const fs = require('fs');
const path = require('path');

function listFiles(dir) {
  const files = [];
  const walk = (d) => {
    let entries;
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch (err) {
      if (err.code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) walk(full);
      else if (e.isFile()) {
        try {
          const st = fs.statSync(full);
          files.push({ file: full, size: st.size, mtimeMs: st.mtimeMs });
        } catch { /* removed meanwhile */ }
      }
    }
  };
  walk(dir);
  return files;
}

/** Removes the oldest files until at most maxFiles files and maxBytes bytes remain; returns what it removed. */
function pruneFolder(dir, { maxFiles, maxBytes }) {
  const files = listFiles(dir).sort((a, b) => a.mtimeMs - b.mtimeMs || a.file.localeCompare(b.file));
  let count = files.length;
  let bytes = files.reduce((sum, f) => sum + f.size, 0);
  const removed = [];
  for (const f of files) {
    if (count <= maxFiles && bytes <= maxBytes) break;
    try {
      fs.rmSync(f.file, { force: true });
    } catch { continue; }
    removed.push(f.file);
    count--;
    bytes -= f.size;
  }
  return { removed, count, bytes };
}

class ReviewFolderLimiter {
  constructor(dir, { maxFiles, maxBytes, intervalMs = 10_000, onError = () => undefined }) {
    Object.assign(this, { dir, maxFiles, maxBytes, intervalMs, onError });
    this.timer = undefined;
  }

  start() {
    if (!this.dir || this.timer) return;
    this.check();
    this.timer = setInterval(() => this.check(), this.intervalMs);
    this.timer.unref();
  }

  check() {
    try {
      return pruneFolder(this.dir, this);
    } catch (err) {
      this.onError(err);
      return undefined;
    }
  }

  stop() {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

module.exports = { pruneFolder, ReviewFolderLimiter };
