// What the command-line tools share: `--name value` options, the project's folders, percentiles,
// a local mosquitto for the benchmarks.
const { spawn } = require('child_process');
const fs = require('fs');
const net = require('net');
const path = require('path');

const root = path.resolve(__dirname, '..');
const defaultDataset = path.resolve(root, '..', 'shared', 'datasets', 'trashnet');
const args = process.argv.slice(2);

/** The value after `--name`, or the fallback. */
function option(name, fallback) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
}

const flag = (name) => args.includes(`--${name}`);

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A plain mosquitto on loopback with its configuration in `dir`; `maxQueued` 0 means no limit.
 * TCP_NODELAY on, as Moquette (Greengrass's local broker) defaults to (its NettyAcceptor:
 * `netty.tcp_nodelay`, default true): mosquitto's default holds small packets back for the peer's
 * delayed ACK, about 40 ms, which would be the broker's latency, not ours.
 */
async function startMosquitto(dir, maxQueued = 0) {
  const port = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, `${process.getuid?.() === 0 ? 'user root\n' : ''}listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages ${maxQueued}\nset_tcp_nodelay true\n`);
  const binary = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find((p) => fs.existsSync(p));
  if (!binary) throw new Error('mosquitto is not installed (apt-get install mosquitto)');
  const child = spawn(binary, ['-c', conf], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const open = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (open) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `mqtt://127.0.0.1:${port}`, pid: child.pid, close: () => child.kill('SIGTERM') };
}

module.exports = { root, defaultDataset, args, option, flag, percentile, freePort, startMosquitto };
