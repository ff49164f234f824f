/**
 * A disk-backed, bounded, ordered spool of outgoing messages: one file per message, named by a
 * growing sequence number, written atomically (temporary file, then rename) so a crash or a Node-RED
 * restart loses nothing that was accepted. When full, the oldest messages are dropped (and counted):
 * on a sorter the newest results matter most, and the limit keeps the disk from filling up.
 */
import { promises as fs } from 'fs';
import * as path from 'path';

export interface SpooledMessage {
  topic: string;
  /** Text stays text (IPC sends it as a JSON message), bytes stay bytes. */
  payload: Buffer | string;
  qos: 0 | 1;
  /** Transport-specific destination (IPC: local pub/sub or IoT Core). */
  destination?: string;
  /** When it was accepted (ms since epoch). */
  at: number;
}

export interface SpoolLimits {
  maxMessages: number;
  maxBytes: number;
}

interface Entry {
  seq: number;
  file: string;
  bytes: number;
}

const SUFFIX = '.msg';

export class DiskSpool {
  private entries: Entry[] = [];
  private nextSeq = 1;
  private totalBytes = 0;
  /** Messages dropped because the spool was full, since it was opened. */
  dropped = 0;
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly dir: string, private readonly limits: SpoolLimits) {}

  get length(): number {
    return this.entries.length;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  /** Reads what an earlier run left behind, oldest first. */
  async open(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const names = (await fs.readdir(this.dir)).filter((n) => n.endsWith(SUFFIX)).sort();
    this.entries = [];
    this.totalBytes = 0;
    for (const name of names) {
      const seq = Number(name.slice(0, -SUFFIX.length));
      if (!Number.isSafeInteger(seq)) continue;
      const { size } = await fs.stat(path.join(this.dir, name));
      this.entries.push({ seq, file: path.join(this.dir, name), bytes: size });
      this.totalBytes += size;
    }
    this.nextSeq = (this.entries[this.entries.length - 1]?.seq ?? 0) + 1;
    for (const leftover of (await fs.readdir(this.dir)).filter((n) => n.endsWith('.tmp'))) {
      await fs.rm(path.join(this.dir, leftover), { force: true }); // a write a crash interrupted was never accepted
    }
  }

  /** Stores a message durably at the tail; resolves once it is on disk. */
  push(message: SpooledMessage): Promise<void> {
    // Writes are serialised so the sequence order is the acceptance order.
    const write = this.writing.then(async () => {
      const seq = this.nextSeq++;
      const file = path.join(this.dir, `${String(seq).padStart(16, '0')}${SUFFIX}`);
      const isText = typeof message.payload === 'string';
      const body = JSON.stringify({
        topic: message.topic, qos: message.qos, destination: message.destination, at: message.at,
        encoding: isText ? 'utf8' : 'base64', payload: isText ? message.payload : (message.payload as Buffer).toString('base64'),
      });
      const tmp = `${file}.tmp`;
      await fs.writeFile(tmp, body, { mode: 0o600 });
      await fs.rename(tmp, file);
      const bytes = Buffer.byteLength(body);
      this.entries.push({ seq, file, bytes });
      this.totalBytes += bytes;
      while (this.entries.length > this.limits.maxMessages || (this.totalBytes > this.limits.maxBytes && this.entries.length > 1)) {
        const oldest = this.entries.shift()!;
        this.totalBytes -= oldest.bytes;
        this.dropped++;
        await fs.rm(oldest.file, { force: true });
      }
    });
    this.writing = write.catch(() => undefined);
    return write;
  }

  /** The oldest message, or undefined when empty. */
  async peek(): Promise<(SpooledMessage & { seq: number }) | undefined> {
    await this.writing;
    const head = this.entries[0];
    if (!head) return undefined;
    const raw = JSON.parse(await fs.readFile(head.file, 'utf8'));
    const payload = raw.encoding === 'utf8' ? String(raw.payload) : Buffer.from(raw.payload, 'base64');
    return { seq: head.seq, topic: raw.topic, qos: raw.qos, destination: raw.destination, at: raw.at, payload };
  }

  /** Removes the oldest message once it has been delivered. */
  async remove(seq: number): Promise<void> {
    const index = this.entries.findIndex((e) => e.seq === seq);
    if (index < 0) return; // already dropped for space
    const [entry] = this.entries.splice(index, 1);
    this.totalBytes -= entry.bytes;
    await fs.rm(entry.file, { force: true });
  }
}

/**
 * Delivers spooled messages one at a time, in order, while the link is up. A message leaves the
 * spool only after the transport confirmed it (QoS 1: the PUBACK), so delivery is at least once and
 * in order; the one in flight when a link drops is sent again after reconnecting.
 */
export class SpoolDrainer {
  private draining = false;
  private stopped = false;

  constructor(
    private readonly spool: DiskSpool,
    private readonly send: (m: SpooledMessage) => Promise<void>,
    private readonly isUp: () => boolean,
    private readonly onChange: () => void = () => undefined,
  ) {}

  async submit(message: SpooledMessage): Promise<void> {
    await this.spool.push(message);
    this.onChange();
    this.kick();
  }

  /** Starts a drain pass if the link is up and none is running. */
  kick(): void {
    if (this.draining || this.stopped || !this.isUp()) return;
    this.draining = true;
    this.drain().finally(() => {
      this.draining = false;
    });
  }

  stop(): void {
    this.stopped = true;
  }

  private async drain(): Promise<void> {
    while (!this.stopped && this.isUp()) {
      const head = await this.spool.peek();
      if (!head) return;
      try {
        await this.send(head);
      } catch {
        return; // the link went down; the next 'connected' kicks again
      }
      await this.spool.remove(head.seq);
      this.onChange();
    }
  }
}
