/**
 * A disk spool of outgoing messages that survives power cuts, damaged files and operators:
 *
 * - an append-only log of segments (`<first seq>.log`), each record `[length u32][crc32 u32][JSON]`;
 *   writes waiting at the same time go out as one batch with one fdatasync (group commit), so a
 *   message counts as accepted only once it is on disk, without one fsync per message;
 * - `delivered` holds the highest sequence number that has left the spool (written atomically and
 *   lazily: after a crash a few delivered messages may go again, which at-least-once allows);
 * - `spool.lock` names the one process that owns the folder (host, boot, pid) and is touched every
 *   LOCK_REFRESH_MS while it does: a lock from an earlier boot, or one nobody touched for
 *   LOCK_STALE_MS, is stale (after a power cut the old pid may belong to another process, and a
 *   recreated container has another host name);
 * - `quarantine/` keeps damaged files for a person to look at, `dead-letter/` the messages a server
 *   refused for good, one JSON file each with the reason.
 *
 * Bounded by count and bytes: when full the oldest messages are dropped (and counted), since on a
 * sorter the newest results matter most and the limit keeps the disk from filling up.
 */
import { promises as fs, readFileSync, readlinkSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { Backoff } from '../lib/backoff';

export interface SpooledMessage {
  topic: string;
  /** Text stays text (IPC sends it as a JSON message), bytes stay bytes. */
  payload: Buffer | string;
  qos: 0 | 1;
  /** Transport-specific destination (IPC: local pub/sub or IoT Core). */
  destination?: string;
  /** When it was accepted (ms since epoch). */
  at: number;
  /** After this time (ms since epoch) the message is worthless and is dropped unsent. */
  expiresAt?: number;
  /** Id of the node that published it, so that a refusal is reported by that node. */
  publisher?: string;
}

export interface SpoolLimits {
  maxMessages: number;
  maxBytes: number;
  /**
   * Messages accepted by this process are also kept in memory, up to this many bytes of records,
   * so that a link that keeps up sends them without reading them back from disk (default 8 MiB).
   */
  memoryBytes?: number;
}

export interface SpoolCounters {
  /** Dropped because the spool was full. */
  dropped: number;
  /** Dropped unsent because they expired. */
  expired: number;
  /** Set aside in dead-letter/ because the server refused them for good. */
  deadLettered: number;
  /** Files or parts of files moved to quarantine/ because they could not be read. */
  quarantined: number;
  /** Accepted messages that could not be read back (their file was damaged or deleted). */
  lost: number;
}

interface Segment {
  name: string;
  file: string;
  firstSeq: number;
  lastSeq: number;
  size: number;
}

interface Entry {
  seq: number;
  /** Unset while the message is being written. */
  segment?: Segment;
  offset: number;
  /** Bytes of its record on disk; 0 while being written. */
  length: number;
  expiresAt?: number;
  /** The message itself: always while it is being written, then while within the memory budget. */
  message?: SpooledMessage;
}

interface PendingWrite {
  entry: Entry;
  resolve: () => void;
  reject: (err: Error) => void;
}

const SEGMENT_SUFFIX = '.log';
const LEGACY_SUFFIX = '.msg';
const HEADER_BYTES = 8;
/** A new segment starts past this size, so delivered data is freed in steps of about this much. */
const SEGMENT_TARGET_BYTES = 4 * 1024 * 1024;
/** Larger records are not written by us; a length above it means the header is damaged. */
const MAX_RECORD_BYTES = 512 * 1024 * 1024;
const CURSOR_FILE = 'delivered';
const LOCK_FILE = 'spool.lock';
/** How often the owner touches its lock, and after how long without a touch a lock is stale. */
export const LOCK_REFRESH_MS = 10_000;
export const LOCK_STALE_MS = 45_000;
const QUARANTINE = 'quarantine';
const DEAD_LETTER = 'dead-letter';
const CURSOR_WRITE_DELAY_MS = 200;
const DEFAULT_MEMORY_BYTES = 8 * 1024 * 1024;
/**
 * Messages in flight at once: enough for 200 results/s over an 80 ms round trip (measured through a
 * delaying proxy: one at a time delivered 7 % of them), under AWS IoT Core's 100 unacknowledged
 * messages per connection; the CRT client also holds to a smaller receive maximum a broker announces.
 */
const DEFAULT_DRAIN_WINDOW = 64;

/** Folders locked by this process: a second lock from the same process is refused too. */
const lockedHere = new Set<string>();

const crc32: (data: Buffer) => number = typeof (zlib as { crc32?: unknown }).crc32 === 'function'
  ? (data) => (zlib as unknown as { crc32(d: Buffer): number }).crc32(data)
  : tableCrc32;

function tableCrc32(data: Buffer): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function segmentName(seq: number): string {
  return `${String(seq).padStart(16, '0')}${SEGMENT_SUFFIX}`;
}

interface StoredRecord extends SpooledMessage {
  seq: number;
}

function encodeRecord(seq: number, m: SpooledMessage): Buffer {
  const isText = typeof m.payload === 'string';
  const body = Buffer.from(JSON.stringify({
    seq, topic: m.topic, qos: m.qos, destination: m.destination, at: m.at, expiresAt: m.expiresAt, publisher: m.publisher,
    encoding: isText ? 'utf8' : 'base64', payload: isText ? m.payload : (m.payload as Buffer).toString('base64'),
  }));
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32LE(body.length, 0);
  header.writeUInt32LE(crc32(body), 4);
  return Buffer.concat([header, body]);
}

/** A stored message as written by this spool or by its earlier one-file-per-message format; throws when malformed. */
function decodeMessage(raw: unknown): SpooledMessage {
  const r = raw as Record<string, unknown> | null;
  if (!r || typeof r !== 'object' || Array.isArray(r)) throw new Error('expected a JSON object');
  if (typeof r.topic !== 'string' || !r.topic) throw new Error(`expected topic to be a non-empty string but received ${JSON.stringify(r.topic)}`);
  if (r.qos !== 0 && r.qos !== 1) throw new Error(`expected qos 0 or 1 but received ${JSON.stringify(r.qos)}`);
  if (typeof r.payload !== 'string') throw new Error(`expected payload to be a string but received ${typeof r.payload}`);
  if (r.encoding !== 'utf8' && r.encoding !== 'base64') throw new Error(`expected encoding utf8 or base64 but received ${JSON.stringify(r.encoding)}`);
  if (r.destination !== undefined && typeof r.destination !== 'string') throw new Error('expected destination to be a string');
  const at = typeof r.at === 'number' && Number.isFinite(r.at) ? r.at : Date.now();
  const expiresAt = typeof r.expiresAt === 'number' && Number.isFinite(r.expiresAt) ? r.expiresAt : undefined;
  return {
    topic: r.topic, qos: r.qos, destination: r.destination as string | undefined, at, expiresAt,
    publisher: typeof r.publisher === 'string' ? r.publisher : undefined,
    payload: r.encoding === 'utf8' ? r.payload : Buffer.from(r.payload, 'base64'),
  };
}

function decodeRecord(body: Buffer): StoredRecord {
  const raw = JSON.parse(body.toString('utf8'));
  const seq = (raw as { seq?: unknown })?.seq;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) throw new Error(`expected seq to be a positive safe integer but received ${JSON.stringify(seq)}`);
  return { ...decodeMessage(raw), seq };
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException)?.code === code;
}

/** This boot of the kernel (Linux), or '' where it cannot be told. */
function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}
const BOOT_ID = bootId();

/** This process's pid namespace (Linux), or '': pids of a lock are only comparable within one. */
function pidNamespace(): string {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return '';
  }
}
const PID_NAMESPACE = pidNamespace();

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, 'EPERM'); // exists, owned by someone else
  }
}

/**
 * Why a lock that another spool wrote no longer holds (a reason to take it over), or '' while its
 * owner may still be there. `idleMs`: since the owner last touched it.
 */
function staleLock(holder: { pid?: unknown; host?: unknown; boot?: unknown; pidns?: unknown }, idleMs: number): string {
  const pid = typeof holder.pid === 'number' && Number.isSafeInteger(holder.pid) && holder.pid > 0 ? holder.pid : 0;
  // Locks appear whole (link), so an unreadable one is an old version's crash mid-write, or damage.
  if (!pid) return idleMs > LOCK_STALE_MS ? 'its lock file is unreadable' : '';
  const sameHost = holder.host === os.hostname();
  // Containers share the host's kernel (and boot id) and may share a host name: pids compare only
  // within one pid namespace (locks of older versions name none: the host decides).
  const samePids = sameHost && (typeof holder.pidns === 'string' && holder.pidns && PID_NAMESPACE ? holder.pidns === PID_NAMESPACE : true);
  if (sameHost && BOOT_ID && typeof holder.boot === 'string' && holder.boot && holder.boot !== BOOT_ID) {
    return 'it ran before this machine restarted';
  }
  // Our own pid in a lock we do not hold is a restart that reused the pid (pid 1 in a container).
  if (samePids && pid === process.pid) return 'it had our process id, so it ended before we started';
  // What tells for other hosts and pid spaces (a container recreated under a new name).
  if (idleMs > LOCK_STALE_MS) return `its lock was last refreshed ${Math.round(idleMs / 1000)} s ago`;
  if (samePids && !processAlive(pid)) return 'it has ended';
  return '';
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes a small file so that either the old or the new content survives a power cut. */
async function writeFileAtomic(file: string, content: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const handle = await fs.open(tmp, 'w', 0o600);
  try {
    await handle.writeFile(content);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fs.rename(tmp, file);
}

export class DiskSpool implements SpoolCounters {
  dropped = 0;
  expired = 0;
  deadLettered = 0;
  quarantined = 0;
  lost = 0;
  /** Where warnings go (a damaged file moved aside, a stale lock taken over). */
  onWarning: (text: string) => void = () => undefined;

  private entries: Entry[] = [];
  private segments: Segment[] = [];
  private totalBytes = 0;
  /** Bytes of the records whose message is held in memory too. */
  private memoryBytes = 0;
  private nextSeq = 1;
  private deliveredSeq = 0;
  private savedDeliveredSeq = 0;
  private cursorTimer?: NodeJS.Timeout;
  private cursorWrite: Promise<void> = Promise.resolve();
  private active?: { segment: Segment; handle: fs.FileHandle };
  private reader?: { segment: Segment; handle: fs.FileHandle };
  private pending: PendingWrite[] = [];
  private flushing?: Promise<void>;
  private state: 'closed' | 'opening' | 'open' = 'closed';
  private holdsLock = false;
  private lockRefresh?: NodeJS.Timeout;
  /** The content of our lock file, to tell it from another process's. */
  private ownLock?: string;
  /** Another process took the lock over: it is not refreshed or removed by us any more. */
  private lostLock = false;
  /** The lock refresh under way, if any. */
  private lockCheck?: Promise<void>;

  constructor(readonly dir: string, private readonly limits: SpoolLimits) {
    this.dir = path.resolve(dir);
  }

  get length(): number {
    return this.entries.length;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** Takes the folder, recovers what an earlier run left (moving damaged data aside) and imports old-format files. */
  async open(): Promise<void> {
    if (this.state !== 'closed') throw new Error(`spool ${this.dir} is already open`);
    this.state = 'opening';
    try {
      await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
      await this.lock();
      this.resetCounters();
      const names = await fs.readdir(this.dir);
      for (const leftover of names.filter((n) => n.endsWith('.tmp'))) {
        await fs.rm(path.join(this.dir, leftover), { force: true }); // a write a crash interrupted was never accepted
      }
      this.deliveredSeq = this.savedDeliveredSeq = await this.readCursor();
      this.nextSeq = this.deliveredSeq + 1;
      const segmentNames = names.filter((n) => n.endsWith(SEGMENT_SUFFIX)).sort();
      for (const name of segmentNames) await this.recoverSegment(name);
      await this.importLegacy(names.filter((n) => n.endsWith(LEGACY_SUFFIX)));
      this.state = 'open';
    } catch (err) {
      await this.releaseLock();
      this.state = 'closed';
      throw err;
    }
  }

  private resetCounters(): void {
    this.entries = [];
    this.segments = [];
    this.totalBytes = this.memoryBytes = 0;
    this.dropped = this.expired = this.deadLettered = this.quarantined = this.lost = 0;
  }

  private async lock(): Promise<void> {
    const file = path.join(this.dir, LOCK_FILE);
    if (lockedHere.has(this.dir)) {
      throw new Error(`spool folder ${this.dir} is already used by another connection in this Node-RED (process ${process.pid}): give each connection its own spool folder`);
    }
    const me = this.lockContent();
    for (let attempt = 0; attempt < 2; attempt++) {
      if (await this.createLock(file, me)) {
        lockedHere.add(this.dir);
        this.holdsLock = true;
        this.ownLock = me;
        this.lostLock = false;
        this.lockRefresh = setInterval(() => this.touchLock(), LOCK_REFRESH_MS).unref();
        return;
      }
      let text = '';
      let touchedAt = 0;
      try {
        touchedAt = (await fs.stat(file)).mtimeMs;
        text = await fs.readFile(file, 'utf8');
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue; // let go meanwhile
        throw err;
      }
      let holder: { pid?: unknown; host?: unknown; since?: unknown } = {};
      try {
        holder = JSON.parse(text);
      } catch {
        /* unreadable: see staleLock */
      }
      const why = staleLock(holder, Date.now() - touchedAt);
      if (!why) {
        throw new Error(`spool folder ${this.dir} is in use by process ${String(holder.pid)} on ${String(holder.host)} since ${String(holder.since)}: give each connection and each Node-RED its own spool folder`);
      }
      // Moved aside (atomic), then checked: a process that judged the same lock stale and replaced
      // it first keeps the folder; its new lock goes back.
      const aside = `${file}.${process.pid}.${Date.now()}.stale`;
      try {
        await fs.rename(file, aside);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        throw err;
      }
      const moved = await fs.readFile(aside, 'utf8').catch(() => '');
      if (moved !== text) {
        await fs.link(aside, file).catch(() => undefined);
        await fs.rm(aside, { force: true });
        throw new Error(`spool folder ${this.dir} was just taken by another process: give each connection and each Node-RED its own spool folder`);
      }
      await fs.rm(aside, { force: true });
      this.onWarning(`took over the spool folder ${this.dir} from process ${typeof holder.pid === 'number' ? holder.pid : '?'}: ${why}`);
    }
    throw new Error(`cannot lock the spool folder ${this.dir}`);
  }

  /** Creates the lock whole or not at all (a reader never sees it half written); false if one exists. */
  private async createLock(file: string, content: string): Promise<boolean> {
    // (not *.tmp: open() removes those, and another process may be opening)
    const tmp = `${file}.${process.pid}.new`;
    await fs.writeFile(tmp, content, { mode: 0o600 });
    try {
      await fs.link(tmp, file);
      return true;
    } catch (err) {
      if (isErrno(err, 'EEXIST')) return false;
      throw err;
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  private lockContent(): string {
    return JSON.stringify({ pid: process.pid, host: os.hostname(), boot: BOOT_ID, pidns: PID_NAMESPACE, since: new Date().toISOString() });
  }

  /**
   * Tells other processes that the owner is still there (see staleLock), after checking that the
   * lock is still ours: one deleted by hand is made again; one another process took over is left
   * to it, loudly (two writers of one folder lose messages).
   */
  private touchLock(): void {
    const file = path.join(this.dir, LOCK_FILE);
    const owned = this.ownLock;
    const check = async () => {
      let text: string;
      try {
        text = await fs.readFile(file, 'utf8');
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
        // A folder deleted while in use is made again by the next write (startSegment).
        if (await fs.stat(this.dir).then(() => true, () => false)) await this.createLock(file, owned!);
        return;
      }
      if (text !== owned) {
        if (!this.lostLock) this.onWarning(`another process took over the spool folder ${this.dir} (${text.slice(0, 200)}): give each connection and each Node-RED its own spool folder`);
        this.lostLock = true;
        return;
      }
      const now = new Date();
      await fs.utimes(file, now, now);
    };
    // releaseLock waits for it, so a refresh never re-makes the lock of a spool that closed meanwhile.
    this.lockCheck = check().catch((err) => this.onWarning(`cannot refresh the spool lock in ${this.dir}: ${(err as Error).message}`));
  }

  private async releaseLock(): Promise<void> {
    if (!this.holdsLock) return;
    clearInterval(this.lockRefresh);
    this.lockRefresh = undefined;
    await this.lockCheck;
    this.holdsLock = false;
    lockedHere.delete(this.dir);
    const file = path.join(this.dir, LOCK_FILE);
    // Never another process's lock (one that took the folder over).
    if ((await fs.readFile(file, 'utf8').catch(() => '')) === this.ownLock) await fs.rm(file, { force: true }).catch(() => undefined);
  }

  private async readCursor(): Promise<number> {
    const file = path.join(this.dir, CURSOR_FILE);
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return 0;
      throw err;
    }
    try {
      const seq = JSON.parse(text).seq;
      if (Number.isSafeInteger(seq) && seq >= 0) return seq;
      throw new Error(`expected seq to be a non-negative integer but received ${JSON.stringify(seq)}`);
    } catch (err) {
      // Without it every message still in the segments is sent again: duplicates, never a loss.
      await this.quarantine(file, `the delivery mark ${CURSOR_FILE} is damaged (${(err as Error).message}); messages still in the spool may be sent again`);
      return 0;
    }
  }

  private async quarantine(file: string, why: string, content?: Buffer): Promise<string> {
    const dir = path.join(this.dir, QUARANTINE);
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const target = path.join(dir, `${Date.now()}-${path.basename(file)}${content ? '.part' : ''}`);
    if (content) await fs.writeFile(target, content, { mode: 0o600 });
    else await fs.rename(file, target).catch(async (err) => {
      if (!isErrno(err, 'ENOENT')) await fs.rm(file, { force: true });
    });
    this.quarantined++;
    this.onWarning(`${why}: moved to ${target}`);
    return target;
  }

  private async recoverSegment(name: string): Promise<void> {
    const file = path.join(this.dir, name);
    const firstSeq = Number(name.slice(0, -SEGMENT_SUFFIX.length));
    if (!/^\d+$/.test(name.slice(0, -SEGMENT_SUFFIX.length)) || !Number.isSafeInteger(firstSeq)) {
      await this.quarantine(file, `${name} is not a spool segment name`);
      return;
    }
    let data: Buffer;
    try {
      data = await fs.readFile(file);
    } catch (err) {
      await this.quarantine(file, `${name} cannot be read (${(err as Error).message})`);
      return;
    }
    const segment: Segment = { name, file, firstSeq, lastSeq: 0, size: 0 };
    const found: Entry[] = [];
    let offset = 0;
    let damage: string | undefined;
    while (offset < data.length) {
      if (data.length - offset < HEADER_BYTES) {
        damage = 'a record header is cut short';
        break;
      }
      const length = data.readUInt32LE(offset);
      if (length === 0 || length > MAX_RECORD_BYTES) {
        damage = `a record length of ${length} bytes is impossible`;
        break;
      }
      if (offset + HEADER_BYTES + length > data.length) {
        damage = 'the last record is cut short';
        break;
      }
      const body = data.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + length);
      if (crc32(body) !== data.readUInt32LE(offset + 4)) {
        damage = 'a record fails its checksum';
        break;
      }
      let record: StoredRecord;
      try {
        record = decodeRecord(body);
      } catch (err) {
        damage = `a record cannot be read (${(err as Error).message})`;
        break;
      }
      if (record.seq <= segment.lastSeq) {
        damage = `sequence numbers go backwards (${record.seq} after ${segment.lastSeq})`;
        break;
      }
      segment.lastSeq = record.seq;
      found.push({ seq: record.seq, segment, offset, length: HEADER_BYTES + length, expiresAt: record.expiresAt });
      offset += HEADER_BYTES + length;
    }
    if (damage) {
      const rest = data.subarray(offset);
      // Zeros or a cut record at the very end are what a power cut during an unfinished write leaves;
      // that write was never reported as accepted. Anything else is kept for a person to look at.
      await this.quarantine(file, `${name}: ${damage} at byte ${offset} of ${data.length}; the ${found.length} records before it are kept`, rest);
      await fs.truncate(file, offset);
    }
    segment.size = offset;
    const previous = this.segments[this.segments.length - 1];
    const undelivered = found.filter((e) => e.seq > this.deliveredSeq && (!previous || e.seq > previous.lastSeq));
    if (!undelivered.length) {
      await fs.rm(file, { force: true });
      return;
    }
    this.segments.push(segment);
    for (const e of undelivered) {
      this.entries.push(e);
      this.totalBytes += e.length;
    }
    this.nextSeq = Math.max(this.nextSeq, segment.lastSeq + 1);
  }

  /** One file per message, as the first version of this spool wrote them (also what an operator may drop in). */
  private async importLegacy(names: string[]): Promise<void> {
    const valid: { file: string; message: SpooledMessage }[] = [];
    for (const name of names.sort()) {
      const file = path.join(this.dir, name);
      try {
        const text = await fs.readFile(file, 'utf8');
        if (!text.trim()) throw new Error('the file is empty');
        valid.push({ file, message: decodeMessage(JSON.parse(text)) });
      } catch (err) {
        await this.quarantine(file, `${name} is not a readable spooled message (${(err as Error).message})`);
      }
    }
    if (!valid.length) return;
    this.state = 'open';
    await Promise.all(valid.map((v) => this.push(v.message)));
    for (const v of valid) await fs.rm(v.file, { force: true });
  }

  /**
   * Stores a message durably at the tail; resolves once it is on disk. The message can be sent at
   * once, while it is being written: a broker that confirms it first makes the disk write moot, and
   * a power cut before both loses only a message that was never reported as accepted.
   */
  push(message: SpooledMessage): Promise<void> {
    if (this.state !== 'open') return Promise.reject(new Error(`the spool ${this.dir} is not open`));
    const entry: Entry = { seq: this.nextSeq++, offset: 0, length: 0, expiresAt: message.expiresAt, message };
    this.entries.push(entry);
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ entry, resolve, reject });
      if (!this.flushing) this.flushing = this.flush();
    });
  }

  /** Writes whatever is waiting as one batch, one fdatasync for all, until nothing waits. */
  private async flush(): Promise<void> {
    try {
      while (this.pending.length) {
        const batch = this.pending.splice(0);
        try {
          await this.appendBatch(batch.map((p) => p.entry));
          batch.forEach((p) => p.resolve());
        } catch (err) {
          // Not accepted: out of the queue again (one already confirmed by the broker is simply gone).
          const failed = new Set(batch.map((p) => p.entry));
          this.entries = this.entries.filter((e) => !failed.has(e));
          const error = new Error(`cannot store the message in the spool folder ${this.dir}: ${(err as Error).message}`);
          batch.forEach((p) => p.reject(error));
        }
      }
    } finally {
      // Cleared in the same tick as the last check of `pending`, so a push that comes next starts a new flush.
      this.flushing = undefined;
    }
  }

  /** True while the entry is still in the queue (not yet delivered, dropped or expired). */
  private isQueued(entry: Entry): boolean {
    return this.entries[this.indexAfter(entry.seq - 1)] === entry;
  }

  private async appendBatch(batch: Entry[]): Promise<void> {
    const firstSeq = batch[0].seq;
    const records = batch.map((e) => encodeRecord(e.seq, e.message!));
    let newSegment = !this.active || this.active.segment.size >= SEGMENT_TARGET_BYTES;
    if (!newSegment && (await this.active!.handle.stat()).nlink === 0) {
      // Deleted while open (an operator freeing space): writing on would store nothing that survives a restart.
      this.onWarning(`${this.active!.segment.name} was deleted while in use; new messages go to a new segment (those still in memory are sent, the others are lost)`);
      newSegment = true;
    }
    if (newSegment) await this.startSegment(firstSeq);
    const { segment, handle } = this.active!;
    const data = Buffer.concat(records);
    const before = segment.size;
    try {
      await handle.write(data, 0, data.length, before);
      await handle.datasync();
      if (newSegment) await fsyncDir(this.dir); // the new file's name must survive a power cut too
    } catch (err) {
      // Keep the log whole: a partly written batch is cut off again (or, failing that, a new segment
      // starts next time and recovery quarantines the torn tail).
      await handle.truncate(before).catch(() => this.closeActive());
      throw err;
    }
    let offset = before;
    const memoryBudget = this.limits.memoryBytes ?? DEFAULT_MEMORY_BYTES;
    records.forEach((record, i) => {
      const entry = batch[i];
      Object.assign(entry, { segment, offset, length: record.length });
      offset += record.length;
      if (!this.isQueued(entry)) return; // confirmed by the broker while it was being written
      this.totalBytes += record.length;
      if (this.memoryBytes + record.length <= memoryBudget) this.memoryBytes += record.length;
      else entry.message = undefined;
    });
    segment.size = offset;
    segment.lastSeq = batch[batch.length - 1].seq;
    while (this.entries.length > this.limits.maxMessages || (this.totalBytes > this.limits.maxBytes && this.entries.length > 1)) {
      this.dropped++;
      this.advance(this.entries[0].seq);
    }
    await this.releaseDeliveredSegments();
  }

  private async startSegment(firstSeq: number): Promise<void> {
    await this.closeActive();
    const name = segmentName(firstSeq);
    const file = path.join(this.dir, name);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(file, 'w', 0o600);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
      // The whole folder was deleted while in use: made again, with our lock, so the spool goes on.
      await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
      await this.createLock(path.join(this.dir, LOCK_FILE), this.ownLock!);
      this.onWarning(`the spool folder ${this.dir} was deleted while in use; made it again`);
      handle = await fs.open(file, 'w', 0o600);
    }
    const segment: Segment = { name, file, firstSeq, lastSeq: firstSeq - 1, size: 0 };
    this.segments.push(segment);
    this.active = { segment, handle };
  }

  private async closeActive(): Promise<void> {
    const active = this.active;
    this.active = undefined;
    if (active) await active.handle.close().catch(() => undefined);
  }

  /**
   * The oldest message that is still worth sending, or undefined when empty. Expired messages are
   * dropped on the way (counted); unreadable ones are moved aside and counted as lost.
   */
  async peek(now = Date.now()): Promise<(SpooledMessage & { seq: number }) | undefined> {
    return (await this.peekAfter(0, 1, now))[0];
  }

  /**
   * Up to `limit` messages in order, starting with the first one after sequence number `afterSeq`
   * (0: the head). Expired or unreadable messages at the head are dealt with as in `peek`; the run
   * stops before such a message further back, which is dealt with once it reaches the head.
   */
  async peekAfter(afterSeq: number, limit: number, now = Date.now()): Promise<Array<SpooledMessage & { seq: number }>> {
    const found: Array<SpooledMessage & { seq: number }> = [];
    if (this.state !== 'open') return found;
    while (found.length < limit) {
      const index = this.indexAfter(found.length ? found[found.length - 1].seq : afterSeq);
      const entry = this.entries[index];
      if (!entry) break;
      const atHead = index === 0;
      if (entry.expiresAt !== undefined && entry.expiresAt <= now) {
        if (!atHead) break;
        this.expired++;
        this.advance(entry.seq);
        continue;
      }
      if (entry.message) {
        found.push({ ...entry.message, seq: entry.seq });
        continue;
      }
      try {
        const { seq, ...message } = await this.read(entry);
        if (!this.isQueued(entry)) continue; // dropped for space meanwhile
        found.push({ ...message, seq });
      } catch (err) {
        if (!atHead) break;
        await this.loseSegment(entry.segment!, (err as Error).message);
      }
    }
    return found;
  }

  /** Index of the first entry with a sequence number above `seq` (entries are in order). */
  private indexAfter(seq: number): number {
    let low = 0;
    let high = this.entries.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.entries[mid].seq <= seq) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  /** Sequence number of the oldest message, if any. */
  get headSeq(): number | undefined {
    return this.entries[0]?.seq;
  }

  private async read(entry: Entry): Promise<StoredRecord> {
    // Only written entries lack their message in memory.
    const segment = entry.segment!;
    if (this.reader?.segment !== segment) {
      await this.reader?.handle.close().catch(() => undefined);
      this.reader = undefined;
      this.reader = { segment, handle: await fs.open(segment.file, 'r') };
    }
    const buffer = Buffer.alloc(entry.length);
    const { bytesRead } = await this.reader.handle.read(buffer, 0, entry.length, entry.offset);
    if (bytesRead !== entry.length) throw new Error(`record ${entry.seq} is cut short`);
    const body = buffer.subarray(HEADER_BYTES);
    if (buffer.readUInt32LE(0) !== body.length || crc32(body) !== buffer.readUInt32LE(4)) throw new Error(`record ${entry.seq} fails its checksum`);
    const record = decodeRecord(body);
    if (record.seq !== entry.seq) throw new Error(`expected record ${entry.seq} but found ${record.seq}`);
    return record;
  }

  /** A segment that can no longer be read (deleted or damaged while open): its messages are lost, the rest go on. */
  private async loseSegment(segment: Segment, why: string): Promise<void> {
    const lost = new Set<Entry>();
    for (const e of this.entries) {
      if (e.segment !== segment) continue;
      if (e.message) e.segment = undefined; // still in memory: it can still be sent
      else lost.add(e);
    }
    if (this.reader?.segment === segment) {
      await this.reader.handle.close().catch(() => undefined);
      this.reader = undefined;
    }
    if (this.active?.segment === segment) await this.closeActive();
    this.lost += lost.size;
    this.entries = this.entries.filter((e) => {
      if (!lost.has(e)) return true;
      this.totalBytes -= e.length;
      return false;
    });
    this.segments = this.segments.filter((s) => s !== segment);
    await this.quarantine(segment.file, `${lost.size} spooled messages in ${segment.name} cannot be read (${why}) and are skipped`);
  }

  /** Removes the oldest message once it has been delivered (or given up on). */
  async remove(seq: number): Promise<void> {
    // Closed: a late confirmation must not touch files another spool may own by now (it goes again: at least once).
    if (this.state !== 'open') return;
    if (this.entries[0]?.seq !== seq) return; // already dropped for space or expired
    this.advance(seq);
    await this.releaseDeliveredSegments();
  }

  /** Sets a message the server refused for good aside in dead-letter/ with the reason; the next ones go on. */
  async deadLetter(message: SpooledMessage & { seq: number }, reason: string): Promise<string> {
    const dir = path.join(this.dir, DEAD_LETTER);
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `${new Date().toISOString().replace(/[:.]/g, '-')}-${message.seq}.json`);
    const isText = typeof message.payload === 'string';
    await writeFileAtomic(file, JSON.stringify({
      reason, refusedAt: new Date().toISOString(), topic: message.topic, qos: message.qos, destination: message.destination,
      at: message.at, encoding: isText ? 'utf8' : 'base64', payload: isText ? message.payload : (message.payload as Buffer).toString('base64'),
    }, null, 1));
    this.deadLettered++;
    await this.remove(message.seq);
    return file;
  }

  private advance(seq: number): void {
    while (this.entries.length && this.entries[0].seq <= seq) {
      const gone = this.entries.shift()!;
      this.totalBytes -= gone.length; // 0 while being written: counted only once written
      if (gone.message) this.memoryBytes -= gone.length;
    }
    if (seq > this.deliveredSeq) this.deliveredSeq = seq;
    if (!this.cursorTimer && this.deliveredSeq !== this.savedDeliveredSeq) {
      this.cursorTimer = setTimeout(() => {
        this.cursorTimer = undefined;
        this.saveCursor().catch((err) => this.onWarning(`cannot record delivery progress in ${this.dir}: ${(err as Error).message}`));
      }, CURSOR_WRITE_DELAY_MS);
      this.cursorTimer.unref();
    }
  }

  private saveCursor(): Promise<void> {
    this.cursorWrite = this.cursorWrite.catch(() => undefined).then(async () => {
      const seq = this.deliveredSeq;
      if (seq === this.savedDeliveredSeq || !this.holdsLock) return;
      await writeFileAtomic(path.join(this.dir, CURSOR_FILE), JSON.stringify({ seq }));
      this.savedDeliveredSeq = seq;
    });
    return this.cursorWrite;
  }

  /** Deletes segments whose every message has left the spool (the one being written stays). */
  private async releaseDeliveredSegments(): Promise<void> {
    while (this.segments.length && this.segments[0].lastSeq <= this.deliveredSeq) {
      const segment = this.segments[0];
      if (this.active?.segment === segment) {
        if (segment.size < SEGMENT_TARGET_BYTES) return;
        await this.closeActive();
      }
      if (this.reader?.segment === segment) {
        await this.reader.handle.close().catch(() => undefined);
        this.reader = undefined;
      }
      try {
        await fs.rm(segment.file, { force: true });
      } catch (err) {
        // Its messages are delivered whatever happens to the file: tried again at the next release.
        this.onWarning(`cannot delete the delivered segment ${segment.file}: ${(err as Error).message}`);
        return;
      }
      this.segments = this.segments.filter((s) => s !== segment);
    }
  }

  /** Finishes pending writes, records delivery progress, and lets go of the folder. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    if (this.flushing) await this.flushing;
    this.state = 'closed';
    clearTimeout(this.cursorTimer);
    this.cursorTimer = undefined;
    try {
      await this.saveCursor();
      if (!this.entries.length) {
        // Nothing left: leave a clean folder (the mark is not needed once no segment remains).
        await this.closeActive();
        for (const segment of this.segments) await fs.rm(segment.file, { force: true });
        this.segments = [];
        await fs.rm(path.join(this.dir, CURSOR_FILE), { force: true });
      }
    } finally {
      await this.closeActive();
      await this.reader?.handle.close().catch(() => undefined);
      this.reader = undefined;
      await this.releaseLock();
    }
  }
}

/** Thrown by a transport when the server refused a message for good (retrying cannot help). */
export class RefusedError extends Error {
  readonly refused = true;
}

export function isRefused(err: unknown): boolean {
  return Boolean((err as { refused?: unknown })?.refused);
}

export interface DrainerHooks {
  /** The queue changed (length or counters). */
  onChange?: () => void;
  /** A refused message was set aside after its last attempt. */
  onDeadLetter?: (message: SpooledMessage, reason: string, file: string) => void;
  onWarning?: (text: string) => void;
}

/**
 * Delivers spooled messages in order while the link is up, with up to `window` in flight: the next
 * one goes out as soon as there is room, not after the previous one's confirmation, so a broker
 * far away (AWS IoT Core) or one that holds back its acknowledgements does not limit delivery to
 * one message per round trip. The transport keeps their order on the wire (the CRT client's
 * operation queue; brokers treat topics as ordered). A message leaves the spool only after the
 * transport confirmed it (QoS 1: the PUBACK), so delivery is at least once and in order; those in
 * flight when a link drops are sent again after reconnecting (those already confirmed are not).
 * A failed send is retried by a timer with back-off, so delivery resumes without new traffic; a
 * message the server refuses for good is tried `maxAttempts` times, then set aside so the ones
 * behind it go on.
 */
export class SpoolDrainer {
  private draining = false;
  private again = false;
  private stopped = true;
  private retryTimer?: NodeJS.Timeout;
  private readonly backoff: Backoff;
  private refusals = { seq: 0, count: 0 };
  /** Confirmed messages still behind an unconfirmed one in the spool. */
  private readonly confirmed = new Set<number>();
  /** Wakes a drain pass that waits on messages in flight when a new one arrives. */
  private wake?: () => void;

  constructor(
    private readonly spool: DiskSpool,
    private readonly send: (m: SpooledMessage) => Promise<void>,
    private readonly isUp: () => boolean,
    private readonly hooks: DrainerHooks = {},
    private readonly options: { maxAttempts?: number; minRetryMs?: number; maxRetryMs?: number; window?: number } = {},
  ) {
    this.backoff = new Backoff(options.minRetryMs ?? 500, options.maxRetryMs ?? 10_000, 2);
  }

  /** Queues a message and starts sending it while it is written; resolves once it is on disk. */
  async submit(message: SpooledMessage): Promise<void> {
    const stored = this.spool.push(message);
    this.kick();
    try {
      await stored;
    } finally {
      this.hooks.onChange?.();
    }
  }

  start(): void {
    this.stopped = false;
    this.backoff.reset();
    this.kick();
  }

  /** Starts a drain pass if the link is up and none is running. */
  kick(): void {
    if (this.stopped || !this.isUp()) return;
    if (this.draining) {
      this.again = true;
      this.wake?.();
      return;
    }
    this.draining = true;
    this.again = false;
    this.drain()
      .catch((err) => {
        this.hooks.onWarning?.(`delivery from the spool stopped: ${(err as Error).message}; retrying`);
        this.retryLater();
      })
      .finally(() => {
        this.draining = false;
        if (this.again) this.kick();
      });
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.wake?.();
  }

  private retryLater(): void {
    if (this.stopped || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kick();
    }, this.backoff.next());
  }

  private async drain(): Promise<void> {
    for (;;) {
      const failed = await this.sendWhileUp();
      if (this.stopped) return;
      if (!failed) return;
      const { message: head, error } = failed;
      if (isRefused(error) && this.spool.headSeq === head.seq) {
        if (this.refusals.seq !== head.seq) this.refusals = { seq: head.seq, count: 0 };
        if (++this.refusals.count >= (this.options.maxAttempts ?? 3)) {
          const reason = (error as Error).message;
          const file = await this.spool.deadLetter(head, reason);
          await this.removeConfirmed();
          this.hooks.onDeadLetter?.(head, reason, file);
          continue;
        }
      }
      this.retryLater(); // link trouble or a refusal not yet final: again after a pause
      return;
    }
  }

  /**
   * Keeps up to `window` messages in flight until the spool is empty, the link goes down or a send
   * fails; then waits for those in flight (also when something throws, so that no send of this pass
   * is still running when the next one starts). Returns the first failure, if any.
   */
  private async sendWhileUp(): Promise<{ message: SpooledMessage & { seq: number }; error: unknown } | undefined> {
    const window = Math.max(1, this.options.window ?? DEFAULT_DRAIN_WINDOW);
    const inFlight = new Set<Promise<void>>();
    let failed: { message: SpooledMessage & { seq: number }; error: unknown } | undefined;
    let confirmedAny = false;
    let lastSent = 0;
    try {
      while (!this.stopped && this.isUp() && !failed) {
        await this.removeConfirmed();
        if (inFlight.size < window) {
          this.again = false;
          const next = await this.spool.peekAfter(lastSent, window - inFlight.size);
          for (const message of next) {
            lastSent = message.seq;
            if (this.confirmed.has(message.seq)) continue; // confirmed in an earlier pass, behind a failed one
            const sending: Promise<void> = this.send(message).then(
              () => { this.confirmed.add(message.seq); confirmedAny = true; },
              (error) => { failed ??= { message, error }; },
            ).finally(() => inFlight.delete(sending));
            inFlight.add(sending);
          }
          if (!next.length && !inFlight.size) return undefined;
          if (!inFlight.size) continue; // all of them were confirmed before: look further
        }
        // Something new arrived meanwhile and there is room for it. (With the window full this must wait:
        // looping here would spin on microtasks and starve the very sends it waits for.)
        if (this.again && inFlight.size < window) continue;
        await Promise.race([...inFlight, new Promise<void>((resolve) => { this.wake = resolve; })]);
        this.wake = undefined;
        if (confirmedAny) this.backoff.reset();
      }
      return failed;
    } finally {
      this.wake = undefined;
      await Promise.all(inFlight); // the sends' own outcomes are handled above: these never reject
      await this.removeConfirmed();
    }
  }

  /** Takes the confirmed messages at the head out of the spool. */
  private async removeConfirmed(): Promise<void> {
    let removed = false;
    for (let head = this.spool.headSeq; head !== undefined && this.confirmed.has(head); head = this.spool.headSeq) {
      this.confirmed.delete(head);
      await this.spool.remove(head);
      removed = true;
    }
    // Ones dropped for space or expired meanwhile are no longer in the spool.
    const head = this.spool.headSeq;
    for (const seq of this.confirmed) if (head === undefined || seq < head) this.confirmed.delete(seq);
    if (removed) this.hooks.onChange?.();
  }
}
