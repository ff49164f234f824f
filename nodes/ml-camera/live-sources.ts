/**
 * Live video sources of ml-camera: MJPEG over HTTP (parsed natively: its frames already are JPEG)
 * and RTSP / V4L2 decoded by a supervised ffmpeg child. All keep only the latest frame, watch for
 * silence, reconnect (at once when a closed port opens again, else with back-off), and report
 * online/offline transitions.
 */
import { ChildProcess, spawn } from 'child_process';
import { EventEmitter } from 'events';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { Backoff } from '../lib/backoff';
import { HttpCameraAuth } from './http-auth';
import { MultipartJpegParser, multipartBoundary } from './multipart';
import type { FrameSource, RawFrame, SourceType } from './sources';
import { cameraEndpoint, connectionHint, redactUrl } from './sources';

export interface LiveOptions {
  /** No frame for this long means the camera is offline. */
  watchdogMs: number;
  /** First wait before reconnecting; grows by half at each failure in between, up to maxBackoffMs. */
  minBackoffMs: number;
  /** Longest wait while the camera answers but the stream fails (missing, stalled, exits). */
  maxBackoffMs: number;
  /** Longest wait after the camera refused the credentials: cameras lock accounts that retry too often. */
  refusedBackoffMs: number;
  /**
   * While waiting to reconnect, the camera's TCP port is tried this often (0: never). While it is
   * closed no decoder is started at all; the moment it opens the stream is reconnected, so a camera
   * is back within about a second plus the connection time after any outage.
   */
  probeIntervalMs: number;
  /** A decoder that ignores SIGTERM this long is killed with SIGKILL. */
  killGraceMs: number;
  username?: string;
  password?: string;
}

/** Reconnect timings of the camera node (documented in its help and the README). */
export const LIVE_TIMINGS = { minBackoffMs: 500, maxBackoffMs: 2500, refusedBackoffMs: 30_000, probeIntervalMs: 1000, killGraceMs: 2000 };

/** Parts of an MJPEG stream in a row that are not JPEG before the stream counts as failed. */
export const NON_JPEG_PARTS_IN_A_ROW = 3;

/** The least time a new connection gets to deliver its first frame (see checkWatchdog). */
export const FIRST_FRAME_TIMEOUT_MS = 10_000;

export type LiveState = 'connecting' | 'online' | 'offline' | 'stopped';

/**
 * The supervisor's phases: at most one connection exists, and only in 'connecting' or 'streaming';
 * 'tearing-down' waits for it (and its process) to end; 'waiting' holds the one reconnect timer.
 */
type Phase = 'idle' | 'connecting' | 'streaming' | 'tearing-down' | 'waiting' | 'stopped';

export type FailureKind = 'transient' | 'refused';

/** Decoded frames per second for live sources: twice the emission rate, so a frame is never older than half an interval. */
export function liveFps(intervalMs: number, maxFps: number): number {
  if (maxFps > 0) return maxFps;
  if (intervalMs <= 0) return 5;
  return Math.min(30, Math.max(1, Math.round((2000 / intervalMs) * 100) / 100));
}

/** Whether a TCP connection to host:port opens within timeoutMs; sockets in flight end on close(). */
export class PortProbe {
  private readonly sockets = new Set<net.Socket>();
  constructor(private readonly host: string, private readonly port: number, private readonly timeoutMs: number) {}

  reachable(): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = net.connect({ host: this.host, port: this.port });
      this.sockets.add(socket);
      const finish = (open: boolean) => {
        socket.destroy();
        this.sockets.delete(socket);
        resolve(open);
      };
      socket.setTimeout(this.timeoutMs, () => finish(false));
      socket.once('connect', () => finish(true));
      socket.once('error', () => finish(false));
      socket.once('close', () => finish(false)); // destroyed by close(): counts as unreachable
    });
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }
}

/**
 * Latest-frame store, watchdog and reconnect supervisor shared by every live source. Events:
 * 'online', 'offline' (reason), 'problem' (Error, once per distinct reason), 'frame'.
 *
 * Every connection attempt gets a generation number; its callbacks pass it back, and anything from an
 * older generation (a decoder killed on purpose, a request replaced) is ignored. A failure moves to
 * 'tearing-down', which awaits the end of the connection before the single reconnect timer is set,
 * so no second connection (or ffmpeg) can start while the first is still alive.
 */
export abstract class LiveSource extends EventEmitter implements FrameSource {
  abstract readonly type: SourceType;
  state: LiveState = 'stopped';
  /** Frames received from the camera (before any interval sampling), for the fps display. */
  received = 0;
  /** Connection attempts made, for tests and diagnostics. */
  attempts = 0;
  private phase: Phase = 'idle';
  private generation = 0;
  private latest?: RawFrame & { seq: number };
  private lastTaken = 0;
  private lastFrameAt = 0;
  private attemptStartedAt = 0;
  private readonly backoff: Backoff;
  private readonly refusedBackoff: Backoff;
  private retryTimer?: NodeJS.Timeout;
  private probeTimer?: NodeJS.Timeout;
  private probe?: PortProbe;
  /** The last probe found the port closed: the camera is away, so no decoder is started. */
  private cameraAway = false;
  private watchdog?: NodeJS.Timeout;
  private lastProblem?: string;
  private teardown: Promise<void> = Promise.resolve();
  private readonly waiters = new Set<() => void>();

  constructor(protected readonly options: LiveOptions) {
    super();
    this.backoff = new Backoff(options.minBackoffMs, options.maxBackoffMs);
    this.refusedBackoff = new Backoff(options.minBackoffMs, Math.max(options.maxBackoffMs, options.refusedBackoffMs), 2);
  }

  /** Starts connecting and keeps the source alive until close(). */
  start(): void {
    if (this.phase !== 'idle') return;
    this.state = 'connecting';
    const target = this.probeTarget();
    if (target && this.options.probeIntervalMs > 0) this.probe = new PortProbe(target.host, target.port, Math.min(1000, this.options.probeIntervalMs));
    this.watchdog = setInterval(() => this.checkWatchdog(), Math.min(1000, Math.max(100, this.options.watchdogMs / 4)));
    this.attempt();
  }

  /** The latest frame if it is newer than the one taken last; undefined when nothing new came. */
  async next(): Promise<RawFrame | undefined> {
    if (!this.latest || this.latest.seq === this.lastTaken) return undefined;
    this.lastTaken = this.latest.seq;
    return { image: this.latest.image, origin: this.latest.origin };
  }

  /** Waits up to timeoutMs (or until aborted or closed) for a frame newer than the last one taken. */
  async waitForFrame(timeoutMs: number, signal?: AbortSignal): Promise<RawFrame | undefined> {
    const ready = await this.next();
    if (ready || this.phase === 'stopped' || signal?.aborted) return ready;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off('frame', done);
        signal?.removeEventListener('abort', done);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.on('frame', done);
      signal?.addEventListener('abort', done);
      this.waiters.add(done);
    });
    return this.next();
  }

  rewind(): void {}

  /** Stops everything: timers, probe, the connection; resolves once its process has exited. */
  async close(): Promise<void> {
    this.phase = 'stopped';
    this.state = 'stopped';
    this.generation++;
    clearInterval(this.watchdog);
    this.clearRetry();
    this.probe?.close();
    for (const wake of [...this.waiters]) wake();
    this.teardown = this.teardown.then(() => this.disconnect()).catch(() => undefined);
    await this.teardown;
  }

  /** Host and port to probe while the camera is away; undefined for sources without one (devices). */
  protected abstract probeTarget(): { host: string; port: number } | undefined;
  /** One connection attempt; its callbacks report with gotFrame(generation, ...) and failed(generation, ...). */
  protected abstract connect(generation: number): void;
  /** Ends the current connection (and its process) completely; resolves when it is gone. */
  protected abstract disconnect(): Promise<void>;

  /** Whether events of this connection attempt still matter. */
  protected isCurrent(generation: number): boolean {
    return generation === this.generation && (this.phase === 'connecting' || this.phase === 'streaming');
  }

  protected gotFrame(generation: number, image: Buffer, origin: string): void {
    if (!this.isCurrent(generation)) return;
    this.phase = 'streaming';
    this.received++;
    this.lastFrameAt = Date.now();
    this.latest = { image, origin, seq: (this.latest?.seq ?? 0) + 1 };
    if (this.state !== 'online') {
      this.state = 'online';
      this.backoff.reset();
      this.refusedBackoff.reset();
      this.lastProblem = undefined;
      this.emit('online');
    }
    this.emit('frame');
  }

  /**
   * The connection of this generation failed or went silent: report, end it, then wait (back-off,
   * probing the port) and retry. Later reports about the same connection are ignored.
   */
  protected failed(generation: number, reason: string, kind: FailureKind = 'transient'): void {
    if (!this.isCurrent(generation)) return;
    this.generation++;
    this.phase = 'tearing-down';
    const wasOnline = this.state === 'online';
    this.state = 'offline';
    if (wasOnline || this.lastProblem === undefined) this.emit('offline', reason);
    if (reason !== this.lastProblem) {
      this.lastProblem = reason;
      this.emit('problem', new Error(reason));
    }
    const wait = kind === 'refused' ? this.refusedBackoff.next() : this.backoff.next();
    const failedAt = Date.now();
    const tornDown = this.generation;
    this.teardown = this.teardown.then(() => this.disconnect()).catch(() => undefined).then(() => {
      if (this.generation !== tornDown || this.phase !== 'tearing-down') return; // closed meanwhile
      this.phase = 'waiting';
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        // While the probe finds the port closed, starting a decoder is pointless: the probe restarts it.
        if (this.phase === 'waiting' && !this.cameraAway) this.attempt();
      }, Math.max(0, wait - (Date.now() - failedAt)));
      // Refused credentials are not fixed by the camera coming back: only the back-off applies.
      if (this.probe && kind === 'transient') this.probeSoon(0);
    });
  }

  private probeSoon(delayMs: number): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      if (this.phase !== 'waiting' || !this.probe) return;
      this.probe.reachable().then((open) => {
        if (this.phase !== 'waiting') return;
        if (!open) {
          this.cameraAway = true;
          return this.probeSoon(this.options.probeIntervalMs);
        }
        if (this.cameraAway) {
          // The camera is back after an outage: reconnect now, with a fresh back-off.
          this.cameraAway = false;
          this.backoff.reset();
          return this.attempt();
        }
        // Reachable, so the failure was something else (missing stream, stall): the back-off timer decides.
        if (!this.retryTimer) this.attempt();
      }, () => this.probeSoon(this.options.probeIntervalMs));
    }, delayMs);
  }

  private clearRetry(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  private attempt(): void {
    if (this.phase === 'stopped') return;
    this.clearRetry();
    this.cameraAway = false;
    const generation = ++this.generation;
    this.phase = 'connecting';
    this.attempts++;
    this.attemptStartedAt = Date.now();
    try {
      this.connect(generation);
    } catch (err) {
      this.failed(generation, (err as Error).message);
    }
  }

  private checkWatchdog(): void {
    if (this.phase !== 'connecting' && this.phase !== 'streaming') return;
    const since = Math.max(this.lastFrameAt, this.attemptStartedAt);
    const silentMs = Date.now() - since;
    // A new connection gets longer for its first frame: ffmpeg probes the stream and waits for a key
    // frame (IP cameras send one every 1-4 s); a shorter limit would kill every attempt half-way.
    const limitMs = this.phase === 'connecting' ? Math.max(this.options.watchdogMs, FIRST_FRAME_TIMEOUT_MS) : this.options.watchdogMs;
    if (silentMs > limitMs) {
      this.failed(this.generation, this.phase === 'streaming'
        ? `no frame for ${(silentMs / 1000).toFixed(1)} s: the stream stalled`
        : `no frame within ${(silentMs / 1000).toFixed(1)} s of connecting`);
    }
  }
}

/** host:port of a camera URL, with the scheme's default port. */
export function urlProbeTarget(address: string): { host: string; port: number } | undefined {
  try {
    const url = new URL(address);
    const defaults: Record<string, number> = { 'http:': 80, 'https:': 443, 'rtsp:': 554, 'rtsps:': 322 };
    const port = url.port ? Number(url.port) : defaults[url.protocol];
    if (!port) return undefined;
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port };
  } catch {
    return undefined;
  }
}

/** MJPEG over HTTP(S): multipart JPEG parts; credentials only when the camera asks (see HttpCameraAuth). */
export class MjpegSource extends LiveSource {
  readonly type = 'mjpeg';
  private readonly url: URL;
  private readonly origin: string;
  private readonly auth: HttpCameraAuth;
  private request?: http.ClientRequest;
  private requestClosed?: Promise<void>;

  constructor(address: string, options: LiveOptions) {
    super(options);
    const endpoint = cameraEndpoint(address, options.username, options.password);
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    this.auth = new HttpCameraAuth(endpoint.username, endpoint.password ?? '', this.url.protocol === 'https:');
  }

  protected probeTarget() {
    return urlProbeTarget(this.url.toString());
  }

  /** @param answeringChallenge this request answers a 401 of the same attempt; a second 401 is final */
  protected connect(generation: number, answeringChallenge = false): void {
    const client = this.url.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { Accept: 'multipart/x-mixed-replace, image/jpeg' };
    const authorization = this.auth.header('GET', this.url.pathname + this.url.search);
    if (authorization) headers.Authorization = authorization;
    const req = client.get(this.url, { headers, timeout: this.options.watchdogMs }, (res) => {
      if (this.request !== req || !this.isCurrent(generation)) return void res.destroy();
      req.setTimeout(0); // from here on the watchdog judges silence, and names it a stall
      const status = res.statusCode ?? 0;
      if (status === 401) {
        res.resume();
        const answer = this.auth.challenge(res.headersDistinct['www-authenticate'], Boolean(authorization));
        if (answer === 'retry' && !answeringChallenge) {
          req.destroy();
          return this.connect(generation, true);
        }
        return this.failed(generation, `MJPEG stream ${this.origin}: the camera refused the ${this.auth.hasCredentials ? 'user name or password' : 'request: it needs a user name and password'} (HTTP 401)`, 'refused');
      }
      if (status !== 200) {
        res.resume();
        return this.failed(generation, `MJPEG stream ${this.origin} answered HTTP ${status}${status === 404 ? ' (check the URL path)' : ''}`, status === 403 ? 'refused' : 'transient');
      }
      const boundary = multipartBoundary(res.headers['content-type']);
      if (!boundary) {
        res.resume();
        return this.failed(generation, `${this.origin} is not an MJPEG stream (Content-Type ${res.headers['content-type'] ?? 'missing'}): for single images choose the snapshot source`);
      }
      let skipped = 0;
      const parser = new MultipartJpegParser(boundary, (jpeg) => {
        skipped = 0;
        this.gotFrame(generation, jpeg, this.origin);
      }, undefined, (part) => {
        // One odd part may be a hiccup; several in a row mean the camera sends something else than JPEG.
        if (++skipped < NON_JPEG_PARTS_IN_A_ROW) return;
        req.destroy();
        this.failed(generation, `MJPEG stream ${this.origin}: ${skipped} parts in a row are not JPEG images (the last, of ${part.length} bytes, starts with ${part.subarray(0, 8).toString('hex') || 'nothing'}): set the camera to send MJPEG`);
      });
      res.on('data', (chunk: Buffer) => {
        try {
          parser.push(chunk);
        } catch (err) {
          req.destroy();
          this.failed(generation, `MJPEG stream ${this.origin}: ${(err as Error).message}`);
        }
      });
      res.on('end', () => this.failed(generation, `MJPEG stream ${this.origin} ended: the camera closed the stream`));
      res.on('error', (err) => this.failed(generation, `MJPEG stream ${this.origin}: ${err.message === 'aborted' ? 'the camera closed the stream' : err.message}`));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${this.options.watchdogMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (this.request === req) this.failed(generation, `MJPEG stream ${this.origin}: ${err.message}${connectionHint(err)}`);
    });
    this.request = req;
    this.requestClosed = new Promise((resolve) => req.once('close', () => resolve()));
  }

  protected async disconnect(): Promise<void> {
    const req = this.request;
    const closed = this.requestClosed;
    this.request = undefined;
    this.requestClosed = undefined;
    req?.destroy();
    await closed; // the socket is gone before a new connection starts
  }
}

export interface FfmpegInput {
  kind: 'rtsp' | 'v4l2';
  /** rtsp://... or /dev/videoN */
  url: string;
  transport?: 'tcp' | 'udp';
  /** Frames per second ffmpeg delivers (the decode-side cap). */
  fps: number;
  /** V4L2 capture size, e.g. 1280x720. */
  videoSize?: string;
  /** V4L2 pixel format, e.g. mjpeg or yuyv422. */
  pixelFormat?: string;
  username?: string;
  password?: string;
}

export interface FfmpegCommand {
  args: string[];
  /** A concat script holding the credentialed URL; written 0600 and removed once ffmpeg has opened it. */
  secretScript?: string;
}

/**
 * The ffmpeg command line for an input. Credentials never appear in it: an RTSP URL that needs
 * them goes into a private ffconcat script that ffmpeg reads instead.
 */
export function buildFfmpegArgs(input: FfmpegInput, scriptPath = '<script>'): FfmpegCommand {
  const args = ['-hide_banner', '-nostdin', '-loglevel', 'error', '-nostats'];
  let secretScript: string | undefined;
  if (input.kind === 'rtsp') {
    const url = new URL(input.url);
    const username = input.username || decodeURIComponent(url.username);
    const password = input.password || decodeURIComponent(url.password);
    url.username = '';
    url.password = '';
    const options: [string, string][] = [['rtsp_transport', input.transport ?? 'tcp'], ['timeout', '10000000']];
    if (username) {
      url.username = encodeURIComponent(username);
      url.password = encodeURIComponent(password);
      const quoted = url.toString().replace(/'/g, "'\\''");
      secretScript = ['ffconcat version 1.0', `file '${quoted}'`, ...options.map(([k, v]) => `option ${k} ${v}`), ''].join('\n');
      args.push('-fflags', 'nobuffer', '-f', 'concat', '-safe', '0', '-protocol_whitelist', 'file,rtsp,rtsps,rtp,srtp,udp,tcp,tls,crypto', '-i', scriptPath);
    } else {
      for (const [k, v] of options) args.push(`-${k}`, v);
      args.push('-fflags', 'nobuffer', '-i', url.toString());
    }
  } else {
    args.push('-f', 'v4l2');
    if (input.pixelFormat) args.push('-input_format', input.pixelFormat);
    if (input.videoSize) args.push('-video_size', input.videoSize);
    args.push('-i', input.url);
  }
  args.push('-an', '-sn', '-dn', '-vf', `fps=${input.fps}`, '-c:v', 'mjpeg', '-q:v', '3', '-f', 'mpjpeg', 'pipe:1');
  return { args, secretScript };
}

/**
 * ffmpeg's lines without their "[tcp @ 0x55d3a401c4c0] " prefixes: a pointer such as 0x...401... must
 * not read as HTTP 401 (a refused connection was reported as a refused password).
 */
function withoutContext(lines: string[]): string[] {
  return lines.map((l) => l.replace(/^\[[^\]]*@ ?0x[0-9a-f]+\]\s*/i, ''));
}

/** Turns ffmpeg's last error lines into what the user should fix. */
export function explainFfmpegError(lines: string[], input: Pick<FfmpegInput, 'kind' | 'url'>): string {
  const text = withoutContext(lines).join('\n');
  const where = input.kind === 'rtsp' ? `RTSP stream ${redactUrl(input.url)}` : `camera ${input.url}`;
  const rules: [RegExp, string][] = [
    [/\b461\b|unsupported transport/i, 'the camera does not offer this RTSP transport (461): choose the other one (TCP or UDP)'],
    [/\b401\b|unauthorized|authori[sz]ation failed/i, 'the camera refused the user name or password (401)'],
    [/\b403\b|forbidden/i, 'access forbidden (403): check the account\'s rights on the camera'],
    [/\b404\b|not found|stream not found/i, 'the stream path was not found (404): check the URL'],
    [/connection refused/i, 'connection refused: is the camera on and the address and port right?'],
    [/no route to host|network is unreachable|timed out|timeout/i, 'the camera is unreachable (timed out)'],
    [/device or resource busy/i, 'the device is busy: another program is using the camera'],
    [/no such file or directory|no such device/i, 'no such device: check the /dev/video path'],
    [/permission denied/i, 'permission denied: the Node-RED user needs access (e.g. the video group)'],
    [/invalid data found|not supported|unsupported|could not find codec|invalid argument|cannot set|not a video capture device/i, 'unsupported format or settings'],
  ];
  const hit = rules.find(([re]) => re.test(text));
  const last = lines.filter(Boolean).slice(-1)[0] ?? '';
  return `${where}: ${hit ? hit[1] : 'ffmpeg failed'}${last ? ` (ffmpeg: ${last.slice(0, 200)})` : ''}`;
}

/** Whether ffmpeg's error means the camera refused the credentials (retrying soon would not help). */
function refusedByCamera(lines: string[]): boolean {
  return /\b401\b|unauthorized|authori[sz]ation failed|\b403\b|forbidden/i.test(withoutContext(lines).join('\n'));
}

/**
 * RTSP or V4L2 through an ffmpeg child process that delivers at most input.fps JPEG frames. At most
 * one child runs at any time: a new one starts only after the previous one has exited (the
 * supervisor awaits disconnect()), and the exit of a child stopped on purpose is ignored.
 */
export class FfmpegSource extends LiveSource {
  readonly type: SourceType;
  private child?: ChildProcess;
  private childExited?: Promise<void>;
  private launching?: Promise<void>;
  private scriptDir?: string;
  private readonly origin: string;
  private readonly secrets: string[];

  constructor(private readonly input: FfmpegInput, options: LiveOptions, private readonly ffmpegPath = 'ffmpeg') {
    super(options);
    this.type = input.kind;
    this.origin = input.kind === 'rtsp' ? redactUrl(input.url) : input.url;
    const url = input.kind === 'rtsp' ? new URL(input.url) : undefined;
    this.secrets = [input.password, url?.password && decodeURIComponent(url.password), url?.password].filter((s): s is string => Boolean(s));
  }

  /** The running ffmpeg's process id (tests check its command line). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  protected probeTarget() {
    return this.input.kind === 'rtsp' ? urlProbeTarget(this.input.url) : undefined;
  }

  protected connect(generation: number): void {
    this.launching = this.launch(generation).catch((err) => this.failed(generation, `${this.origin}: ${(err as Error).message}`));
  }

  private async launch(generation: number): Promise<void> {
    let scriptPath: string | undefined;
    const plan = buildFfmpegArgs(this.input);
    if (plan.secretScript) {
      this.scriptDir = await fs.mkdtemp(path.join(os.tmpdir(), 'ml-camera-'));
      scriptPath = path.join(this.scriptDir, 'input.ffconcat');
      await fs.writeFile(scriptPath, plan.secretScript, { mode: 0o600 });
    }
    // Stopped or failed while the script was written: start nothing.
    if (!this.isCurrent(generation)) return this.removeScript();
    if (this.child) await this.stopChild(); // cannot happen by construction; never two decoders even so
    const { args } = buildFfmpegArgs(this.input, scriptPath);
    const child = spawn(this.ffmpegPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.childExited = new Promise((resolve) => child.once('close', () => resolve()));
    const stderrLines: string[] = [];
    let stderrTail = '';
    const parser = new MultipartJpegParser('ffmpeg', (jpeg) => {
      this.removeScript(); // ffmpeg has opened the input: the credentials file is no longer needed
      this.gotFrame(generation, jpeg, this.origin);
    });
    child.stdout!.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk);
      } catch (err) {
        this.failed(generation, `${this.origin}: ${(err as Error).message}`);
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      stderrTail += this.redact(chunk.toString());
      const lines = stderrTail.split('\n');
      stderrTail = lines.pop() ?? '';
      stderrLines.push(...lines.map((l) => l.trim()).filter(Boolean));
      if (stderrLines.length > 20) stderrLines.splice(0, stderrLines.length - 20); // bounded
    });
    child.once('error', (err: NodeJS.ErrnoException) => {
      this.failed(generation, err.code === 'ENOENT'
        ? `ffmpeg is not installed (or not at "${this.ffmpegPath}"): install it, e.g. apt-get install ffmpeg`
        : `${this.origin}: cannot start ffmpeg: ${err.message}`);
    });
    child.once('close', (code) => {
      if (this.child === child) this.child = undefined;
      this.removeScript();
      // A child we stopped (failure handled, or closing) has an old generation: isCurrent ignores it.
      if (stderrTail.trim()) stderrLines.push(stderrTail.trim());
      this.failed(generation,
        stderrLines.length ? explainFfmpegError(stderrLines, this.input) : `${this.origin}: ffmpeg exited with code ${code}`,
        refusedByCamera(stderrLines) ? 'refused' : 'transient');
    });
  }

  private redact(text: string): string {
    let out = text.replace(/(rtsps?:\/\/)[^@/\s]*@/gi, '$1');
    for (const s of this.secrets) out = out.split(s).join('***');
    return out;
  }

  private async removeScript(): Promise<void> {
    const dir = this.scriptDir;
    this.scriptDir = undefined;
    if (dir) await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }

  /** SIGTERM, SIGKILL after the grace period; resolves when the process has exited. */
  private async stopChild(): Promise<void> {
    const child = this.child;
    const exited = this.childExited;
    if (!child || !exited) return;
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), this.options.killGraceMs);
      await exited;
      clearTimeout(killer);
    } else {
      await exited;
    }
    if (this.child === child) {
      this.child = undefined;
      this.childExited = undefined;
    }
  }

  protected async disconnect(): Promise<void> {
    await this.launching; // a launch half-way through must finish (or see the stop) before we clean up
    await this.stopChild();
    await this.removeScript(); // awaited: closing must not leave the credentials file behind
  }
}
