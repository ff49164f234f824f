/**
 * Live video sources of ml-camera: MJPEG over HTTP (parsed natively: its frames already are JPEG)
 * and RTSP / V4L2 decoded by a supervised ffmpeg child. All keep only the latest frame, watch for
 * silence, reconnect with back-off, and report online/offline transitions.
 */
import { ChildProcess, spawn } from 'child_process';
import { EventEmitter } from 'events';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import { Backoff } from '../lib/backoff';
import { digestAuthorization, parseDigestChallenge } from './digest-auth';
import { MultipartJpegParser, multipartBoundary } from './multipart';
import type { FrameSource, RawFrame, SourceType } from './sources';
import { basicAuthorization, cameraEndpoint, connectionHint, redactUrl } from './sources';

export interface LiveOptions {
  /** No frame for this long means the camera is offline. */
  watchdogMs: number;
  /** First and longest wait before reconnecting; grows by half at each failure in between. */
  minBackoffMs: number;
  maxBackoffMs: number;
  username?: string;
  password?: string;
}

export type LiveState = 'connecting' | 'online' | 'offline' | 'stopped';

/** Decoded frames per second for live sources: twice the emission rate, so a frame is never older than half an interval. */
export function liveFps(intervalMs: number, maxFps: number): number {
  if (maxFps > 0) return maxFps;
  if (intervalMs <= 0) return 5;
  return Math.min(30, Math.max(1, Math.round((2000 / intervalMs) * 100) / 100));
}

/**
 * Latest-frame store, watchdog and reconnect loop shared by every live source. Events:
 * 'online', 'offline' (reason), 'problem' (Error, once per distinct reason), 'frame'.
 */
export abstract class LiveSource extends EventEmitter implements FrameSource {
  abstract readonly type: SourceType;
  state: LiveState = 'stopped';
  /** Frames received from the camera (before any interval sampling), for the fps display. */
  received = 0;
  private latest?: RawFrame & { seq: number };
  private lastTaken = 0;
  private lastFrameAt = 0;
  private attemptStartedAt = 0;
  private readonly backoff: Backoff;
  private retryTimer?: NodeJS.Timeout;
  private watchdog?: NodeJS.Timeout;
  private lastProblem?: string;

  constructor(protected readonly options: LiveOptions) {
    super();
    this.backoff = new Backoff(options.minBackoffMs, options.maxBackoffMs);
  }

  /** Starts connecting and keeps the source alive until close(). */
  start(): void {
    if (this.state !== 'stopped') return;
    this.state = 'connecting';
    this.watchdog = setInterval(() => this.checkWatchdog(), Math.min(1000, Math.max(100, this.options.watchdogMs / 4)));
    this.attempt();
  }

  /** The latest frame if it is newer than the one taken last; undefined when nothing new came. */
  async next(): Promise<RawFrame | undefined> {
    if (!this.latest || this.latest.seq === this.lastTaken) return undefined;
    this.lastTaken = this.latest.seq;
    return { image: this.latest.image, origin: this.latest.origin };
  }

  /** Waits up to timeoutMs for a frame newer than the last one taken. */
  async waitForFrame(timeoutMs: number): Promise<RawFrame | undefined> {
    const ready = await this.next();
    if (ready) return ready;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off('frame', done);
        resolve(this.next());
      };
      const timer = setTimeout(done, timeoutMs);
      this.on('frame', done);
    });
  }

  rewind(): void {}

  async close(): Promise<void> {
    this.state = 'stopped';
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    this.removeAllListeners('frame');
    await this.disconnect();
  }

  /** One connection attempt; implementations call gotFrame() and failed(). */
  protected abstract connect(): void;
  /** Ends the current connection (and its process) completely. */
  protected abstract disconnect(): Promise<void>;

  protected gotFrame(image: Buffer, origin: string): void {
    if (this.state === 'stopped') return;
    this.received++;
    this.lastFrameAt = Date.now();
    this.latest = { image, origin, seq: (this.latest?.seq ?? 0) + 1 };
    if (this.state !== 'online') {
      this.state = 'online';
      this.backoff.reset();
      this.lastProblem = undefined;
      this.emit('online');
    }
    this.emit('frame');
  }

  /** The connection failed or went silent: report, drop it, retry after the back-off. */
  protected failed(reason: string): void {
    if (this.state === 'stopped' || this.retryTimer) return;
    const wasOnline = this.state === 'online';
    this.state = 'offline';
    if (wasOnline || this.lastProblem === undefined) this.emit('offline', reason);
    if (reason !== this.lastProblem) {
      this.lastProblem = reason;
      this.emit('problem', new Error(reason));
    }
    const wait = this.backoff.next();
    this.disconnect().finally(() => {
      if (this.state === 'stopped') return;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        if (this.state !== 'stopped') this.attempt();
      }, wait);
    });
  }

  private attempt(): void {
    this.attemptStartedAt = Date.now();
    if (this.state !== 'online') this.state = this.state === 'offline' ? 'offline' : 'connecting';
    try {
      this.connect();
    } catch (err) {
      this.failed((err as Error).message);
    }
  }

  private checkWatchdog(): void {
    if (this.retryTimer || this.state === 'stopped') return;
    const since = Math.max(this.lastFrameAt, this.attemptStartedAt);
    const silentMs = Date.now() - since;
    if (silentMs > this.options.watchdogMs) {
      this.failed(this.state === 'online'
        ? `no frame for ${(silentMs / 1000).toFixed(1)} s: the stream stalled`
        : `no frame within ${(silentMs / 1000).toFixed(1)} s of connecting`);
    }
  }
}

/** MJPEG over HTTP(S): multipart JPEG parts, basic or digest authentication. */
export class MjpegSource extends LiveSource {
  readonly type = 'mjpeg';
  private readonly url: URL;
  private readonly origin: string;
  private request?: http.ClientRequest;
  private digestNonceCount = 0;

  private readonly username?: string;
  private readonly password: string;

  constructor(address: string, options: LiveOptions) {
    super(options);
    const endpoint = cameraEndpoint(address, options.username, options.password);
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    this.username = endpoint.username;
    this.password = endpoint.password ?? '';
  }

  protected connect(authorization?: string): void {
    const client = this.url.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { Accept: 'multipart/x-mixed-replace, image/jpeg' };
    const { username, password } = this;
    if (authorization) headers.Authorization = authorization;
    else if (username) headers.Authorization = basicAuthorization(username, password);
    const req = client.get(this.url, { headers, timeout: this.options.watchdogMs }, (res) => {
      req.setTimeout(0); // from here on the watchdog judges silence, and names it a stall
      const status = res.statusCode ?? 0;
      if (status === 401) {
        res.resume();
        const challenge = parseDigestChallenge(res.headers['www-authenticate']);
        if (challenge && username && !authorization) {
          const uri = this.url.pathname + this.url.search;
          return this.connect(digestAuthorization(challenge, 'GET', uri, username, password, ++this.digestNonceCount));
        }
        return this.failed(`MJPEG stream ${this.origin}: the camera refused the ${username ? 'user name or password' : 'request: it needs a user name and password'} (HTTP 401)`);
      }
      if (status !== 200) {
        res.resume();
        return this.failed(`MJPEG stream ${this.origin} answered HTTP ${status}${status === 404 ? ' (check the URL path)' : ''}`);
      }
      const boundary = multipartBoundary(res.headers['content-type']);
      if (!boundary) {
        res.resume();
        return this.failed(`${this.origin} is not an MJPEG stream (Content-Type ${res.headers['content-type'] ?? 'missing'}): for single images choose the snapshot source`);
      }
      const parser = new MultipartJpegParser(boundary, (jpeg) => this.gotFrame(jpeg, this.origin));
      res.on('data', (chunk: Buffer) => {
        try {
          parser.push(chunk);
        } catch (err) {
          req.destroy();
          this.failed(`MJPEG stream ${this.origin}: ${(err as Error).message}`);
        }
      });
      res.on('end', () => this.failed(`MJPEG stream ${this.origin} ended: the camera closed the stream`));
      res.on('error', (err) => this.failed(`MJPEG stream ${this.origin}: ${err.message === 'aborted' ? 'the camera closed the stream' : err.message}`));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${this.options.watchdogMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => this.failed(`MJPEG stream ${this.origin}: ${err.message}${connectionHint(err)}`));
    this.request = req;
  }

  protected async disconnect(): Promise<void> {
    this.request?.destroy();
    this.request = undefined;
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

/** Turns ffmpeg's last error lines into what the user should fix. */
export function explainFfmpegError(lines: string[], input: Pick<FfmpegInput, 'kind' | 'url'>): string {
  const text = lines.join('\n');
  const where = input.kind === 'rtsp' ? `RTSP stream ${redactUrl(input.url)}` : `camera ${input.url}`;
  const rules: [RegExp, string][] = [
    [/401|unauthorized|authori[sz]ation failed/i, 'the camera refused the user name or password (401)'],
    [/403|forbidden/i, 'access forbidden (403): check the account\'s rights on the camera'],
    [/404|not found|stream not found/i, 'the stream path was not found (404): check the URL'],
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

/** RTSP or V4L2 through an ffmpeg child process that delivers at most input.fps JPEG frames. */
export class FfmpegSource extends LiveSource {
  readonly type: SourceType;
  private child?: ChildProcess;
  private exited?: Promise<void>;
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

  private launching?: Promise<void>;

  protected connect(): void {
    this.launching = this.launch().catch((err) => this.failed(`${this.origin}: ${(err as Error).message}`));
  }

  private async launch(): Promise<void> {
    let scriptPath: string | undefined;
    const plan = buildFfmpegArgs(this.input);
    if (plan.secretScript) {
      this.scriptDir = await fs.mkdtemp(path.join(os.tmpdir(), 'ml-camera-'));
      scriptPath = path.join(this.scriptDir, 'input.ffconcat');
      await fs.writeFile(scriptPath, plan.secretScript, { mode: 0o600 });
    }
    if (this.state === 'stopped') return this.removeScript();
    const { args } = buildFfmpegArgs(this.input, scriptPath);
    const child = spawn(this.ffmpegPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const stderrLines: string[] = [];
    let stderrTail = '';
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
    const parser = new MultipartJpegParser('ffmpeg', (jpeg) => {
      this.removeScript(); // ffmpeg has opened the input: the credentials file is no longer needed
      this.gotFrame(jpeg, this.origin);
    });
    child.stdout!.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk);
      } catch (err) {
        this.failed(`${this.origin}: ${(err as Error).message}`);
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
      this.failed(err.code === 'ENOENT'
        ? `ffmpeg is not installed (or not at "${this.ffmpegPath}"): install it, e.g. apt-get install ffmpeg`
        : `${this.origin}: cannot start ffmpeg: ${err.message}`);
    });
    child.once('close', (code, signal) => {
      if (this.child === child) this.child = undefined;
      this.removeScript();
      if (this.state === 'stopped' || signal) return;
      if (stderrTail.trim()) stderrLines.push(stderrTail.trim());
      this.failed(stderrLines.length ? explainFfmpegError(stderrLines, this.input) : `${this.origin}: ffmpeg exited with code ${code}`);
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

  protected async disconnect(): Promise<void> {
    await this.launching; // a launch half-way through must finish (or see the stop) before we clean up
    const child = this.child;
    const exited = this.exited;
    this.child = undefined;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exited;
      clearTimeout(killer);
    } else if (exited) {
      await exited;
    }
    await this.removeScript(); // awaited: closing must not leave the credentials file behind
  }
}
