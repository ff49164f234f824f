/**
 * One camera of an ml-camera node: its source, frame numbers, interval ticks on the camera's own
 * phase, capture deadline, error throttle and live online/offline events. The node runs one of
 * these for its single source, or one per entry of its camera list; it only wires them to
 * Node-RED (send, error, status) through a CameraHost.
 */
import { statusText } from '../lib/node-status';
import sharp from 'sharp';
import { ErrorThrottle, repeatSuffix } from '../lib/error-throttle';
import { readJpegHeader } from '../lib/jpeg-header';
import { RateMeter } from '../lib/frame-queue';
import { errorMessage, NodeMessage, NodeStatus, textSetting } from '../lib/red-types';
import { CameraTiming, namedNumberSetting } from './camera-settings';
import { CaptureBusy, CaptureGuard } from './capture-guard';
import { FfmpegSource, LIVE_TIMINGS, liveFps, LiveOptions, LiveSource, MjpegSource } from './live-sources';
import {
  detectSourceType, FileSource, isV4l2Device, FolderSource, FrameSource, looksLikeMjpeg, normaliseToJpeg, redactUrl, SnapshotSource, SourceType, TestPatternSource,
} from './sources';
import { phaseOffset, TickSchedule } from './tick-schedule';
import type { CameraEvent, FrameInfo } from '../lib/messages';

export type { FrameInfo };

/** What a camera reports to its node. */
export interface CameraHost {
  /** A frame of an interval tick, for the first output. */
  frame(msg: NodeMessage): void;
  /** An online/offline event, for the second output. */
  event(msg: NodeMessage): void;
  /** An error to raise (already throttled): node.error(message, msg). */
  error(message: string, msg: NodeMessage): void;
  /** What this camera alone would show as the node's status. */
  status(status: NodeStatus): void;
}

/** The node's settings that every camera of it shares (its editor fields). */
export interface CameraSettings {
  /** auto, or the type every source of the node has. */
  sourceType: string;
  timing: CameraTiming;
  /** The node's config: loop, recursive, pattern size, transport, videoSize, pixelFormat, ffmpegPath. */
  config: Record<string, unknown>;
  username?: string;
  password?: string;
}

/** How a camera is doing, for a node's summary of many. */
export type CameraHealth = 'starting' | 'online' | 'offline' | 'stopped' | 'finished';

/** Whether a source setting names a live camera (connected at deploy, so the first tick has a frame). */
export function isLiveSetting(sourceType: string, source: string): boolean {
  if (['rtsp', 'v4l2', 'mjpeg'].includes(sourceType)) return true;
  return sourceType === 'auto' && (/^rtsps?:/i.test(source) || isV4l2Device(source) || (/^https?:/i.test(source) && looksLikeMjpeg(source)));
}

export class CameraRunner {
  seq = 0;
  finished = false;
  closed = false;
  health: CameraHealth = 'starting';
  /** The last problem, for a node's summary. */
  problem?: string;
  readonly meter = new RateMeter();
  readonly phaseMs: number;
  private readonly guard: CaptureGuard;
  private readonly errors = new ErrorThrottle(1000);
  private readonly schedule?: TickSchedule;
  private source?: FrameSource;
  private opening?: Promise<FrameSource>;
  private busyStatusAt = 0;
  private readonly where: string;
  /** The end of the source, for the status: "photos/belt1", "cam/stream1". */
  private readonly shortWhere: string;

  constructor(readonly id: string, readonly sourceSetting: string, private readonly settings: CameraSettings, private readonly host: CameraHost) {
    const { intervalMs, captureDeadlineMs } = settings.timing;
    this.guard = new CaptureGuard(captureDeadlineMs);
    this.where = sourceSetting ? redactUrl(sourceSetting) : 'the test pattern';
    this.shortWhere = sourceSetting ? this.where.split('/').slice(-2).join('/') : 'test pattern';
    this.phaseMs = intervalMs > 0 ? phaseOffset(id, intervalMs) : 0;
    if (intervalMs > 0) this.schedule = new TickSchedule(intervalMs, this.phaseMs, () => this.onTick());
  }

  /** Whether the interval is running. */
  get running(): boolean {
    return this.schedule?.running ?? false;
  }

  /** The live source's state (connecting, online, offline), if this camera is live and open. */
  get liveState(): string | undefined {
    return this.source instanceof LiveSource ? this.source.state : undefined;
  }

  /** Starts what runs by itself: a live camera connects now, and the interval ticks on this camera's phase. */
  start(): void {
    if (isLiveSetting(this.settings.sourceType, this.sourceSetting)) {
      this.getSource().catch((err) => this.raiseFromInterval(errorMessage(err)));
    }
    this.startTicks();
  }

  startTicks(): void {
    if (!this.schedule || this.closed) return;
    if (this.health === 'stopped') this.health = 'starting';
    this.schedule.start();
  }

  stopTicks(): void {
    if (!this.schedule) return;
    this.schedule.stop();
    this.health = 'stopped';
  }

  /** Plays a folder from its beginning again. */
  rewind(): void {
    this.source?.rewind();
    this.finished = false;
    if (this.health === 'finished') this.health = 'starting';
  }

  /**
   * Captures one frame for a message: the message with payload and frame set; null when a finite
   * source is exhausted; undefined when a capture was already running (skipped, shown in the status).
   * Throws what failed; whether to raise it is decided by triggerError().
   */
  async trigger(msg: NodeMessage): Promise<NodeMessage | null | undefined> {
    try {
      return await this.tick(msg);
    } catch (err) {
      if (err instanceof CaptureBusy) {
        this.showBusy();
        return undefined; // deliberate drop, counted in the status
      }
      throw err;
    }
  }

  /**
   * The error a failed trigger completes with: the error itself the first time, undefined for repeats
   * within a second (counted in the status instead).
   */
  triggerError(err: unknown): Error | undefined {
    let raised = false;
    this.raise(errorMessage(err), () => { raised = true; });
    return raised ? (err instanceof Error ? err : new Error(String(err))) : undefined;
  }

  /** Stops the ticks, aborts a running capture and closes the source (and waits for its ffmpeg). */
  async close(): Promise<void> {
    this.closed = true;
    this.schedule?.stop();
    this.guard.abort(new Error('the camera node is closing'));
    // A source still opening is closed once open; live sources resolve once their ffmpeg has exited.
    await Promise.resolve(this.opening?.catch(() => undefined));
    const closing = this.source;
    this.source = undefined;
    await closing?.close();
  }

  private onTick(): void {
    this.tick(undefined).then((msg) => {
      if (msg) this.host.frame(msg);
    }, (err) => {
      if (this.closed) return;
      if (err instanceof CaptureBusy) return this.showBusy();
      this.raiseFromInterval(errorMessage(err));
    });
  }

  private errorMsg(reason: string): NodeMessage {
    return { topic: `${this.id}/error`, payload: { event: 'error', camera: this.id, reason } };
  }

  private raiseFromInterval(message: string): void {
    this.raise(message, (m) => this.host.error(m, this.errorMsg(m)));
  }

  /** Raises an error at most once a second per message; repeats are counted in the status. */
  private raise(message: string, report: (message: string) => void): void {
    const decision = this.errors.check(message);
    this.problem = message;
    if (this.health !== 'stopped' && this.health !== 'finished') this.health = 'offline';
    this.host.status({ fill: 'red', shape: 'ring', text: statusText(message) + repeatSuffix(decision.count) });
    if (decision.raise) report(message);
  }

  /** One capture at a time, within the capture deadline; a tick that finds one running is skipped (CaptureBusy). */
  private async tick(trigger: NodeMessage | undefined): Promise<NodeMessage | null | undefined> {
    const msg = await this.guard.run(() => this.where, (signal) => this.capture(trigger, signal));
    if (this.closed || msg === undefined) return undefined;
    if (!msg) {
      this.finished = true;
      this.schedule?.stop();
      this.health = 'finished';
      this.host.status({ fill: 'blue', shape: 'dot', text: `finished: ${this.seq} frames` });
      return null;
    }
    this.meter.tick();
    if (!(this.source instanceof LiveSource)) {
      this.health = 'online';
      this.problem = undefined;
    }
    if (this.source) this.showStatus(this.source);
    return msg;
  }

  /** A frame message; null when a finite source is exhausted, undefined when a live one has nothing new. */
  private async capture(trigger: NodeMessage | undefined, signal: AbortSignal): Promise<NodeMessage | null | undefined> {
    const src = await this.getSource();
    const { timeoutMs } = this.settings.timing;
    const raw = src instanceof LiveSource && trigger ? await src.waitForFrame(timeoutMs, signal) : await src.next(signal);
    if (raw === undefined && src instanceof LiveSource && trigger && !signal.aborted) {
      throw new Error(`no frame from the ${src.type} camera within ${timeoutMs} ms (${src.state})`);
    }
    if (!raw) return raw;
    let image: Buffer;
    let meta: { width?: number; height?: number };
    try {
      image = await normaliseToJpeg(raw.image);
      meta = readJpegHeader(image) ?? (await sharp(image).metadata());
    } catch (err) {
      throw new Error(`frame from ${raw.origin} is not a readable image: ${errorMessage(err)}`);
    }
    const frame: FrameInfo = {
      camera: this.id,
      seq: ++this.seq,
      capturedAt: new Date().toISOString(),
      width: meta.width ?? 0,
      height: meta.height ?? 0,
      origin: raw.origin,
      source: src.type,
    };
    const msg: NodeMessage = trigger ?? {};
    msg.payload = image;
    msg.frame = frame;
    msg.topic = msg.topic ?? this.id;
    return msg;
  }

  private getSource(): Promise<FrameSource> {
    if (this.source) return Promise.resolve(this.source);
    this.opening ??= this.openSource().then((s) => {
      // Closed while opening: close() closes it once it is open.
      this.source = s;
      return s;
    }).finally(() => { this.opening = undefined; });
    return this.opening;
  }

  private async openSource(): Promise<FrameSource> {
    const { sourceType, config, timing } = this.settings;
    const sourceSetting = this.sourceSetting;
    const type = sourceType === 'auto' ? await detectSourceType(sourceSetting) : (sourceType as SourceType);
    switch (type) {
      case 'pattern':
        return new TestPatternSource(namedNumberSetting(config, 'patternWidth', 640, 16, 4096, 'pixels'), namedNumberSetting(config, 'patternHeight', 480, 16, 4096, 'pixels'));
      case 'folder':
        return new FolderSource(sourceSetting, { loop: config.loop !== false, recursive: config.recursive !== false });
      case 'file':
        return new FileSource(sourceSetting);
      case 'url':
        return new SnapshotSource(sourceSetting, { username: this.settings.username, password: this.settings.password, timeoutMs: timing.timeoutMs });
      case 'mjpeg':
        return this.startLive(new MjpegSource(sourceSetting, this.liveOptions()));
      case 'rtsp':
      case 'v4l2':
        return this.startLive(new FfmpegSource({
          kind: type,
          url: sourceSetting,
          transport: config.transport === 'udp' ? 'udp' : 'tcp',
          fps: liveFps(timing.intervalMs, timing.maxFps),
          videoSize: textSetting(config.videoSize) || undefined,
          pixelFormat: textSetting(config.pixelFormat) || undefined,
          username: this.settings.username,
          password: this.settings.password,
        }, this.liveOptions(), textSetting(config.ffmpegPath) || 'ffmpeg'));
      default:
        throw new Error(`Expected sourceType of auto, folder, file, url, mjpeg, rtsp, v4l2 or pattern but received "${type}"`);
    }
  }

  private liveOptions(): LiveOptions {
    return { watchdogMs: this.settings.timing.watchdogMs, ...LIVE_TIMINGS, username: this.settings.username, password: this.settings.password };
  }

  /** Live sources run by themselves; their transitions go to the second output and the status. */
  private startLive(live: LiveSource): LiveSource {
    const event = (name: 'online' | 'offline', reason?: string) => {
      this.host.event({ topic: `${this.id}/${name}`, payload: { event: name, camera: this.id, reason, at: new Date().toISOString(), source: live.type } });
    };
    live.on('online', () => {
      this.health = 'online';
      this.problem = undefined;
      event('online');
      this.host.status({ fill: 'green', shape: 'dot', text: `${live.type} online` });
    });
    live.on('offline', (reason: string) => {
      this.health = 'offline';
      this.problem = reason;
      event('offline', reason);
      this.host.status({ fill: 'red', shape: 'ring', text: statusText(`offline: ${reason}`) });
    });
    live.on('problem', (err: Error) => this.raiseFromInterval(err.message));
    this.host.status({ fill: 'yellow', shape: 'ring', text: `connecting to ${live.type}` });
    live.start();
    return live;
  }

  private showStatus(src: FrameSource): void {
    const parts = [`${this.meter.rate().toFixed(1)} fps`, `#${this.seq}`];
    if (src instanceof LiveSource) parts.unshift(src.state);
    if (this.guard.skippedTotal) parts.push(`skipped ${this.guard.skippedTotal}`);
    this.host.status({ fill: 'green', shape: 'dot', text: `${this.shortWhere} · ${parts.join(' · ')}`.slice(0, 80) });
  }

  /** A skipped tick is no fault, but a capture that blocks ticks must be visible (at most 4 updates a second). */
  private showBusy(): void {
    const now = Date.now();
    if (now - this.busyStatusAt < 250) return;
    this.busyStatusAt = now;
    const busyMs = this.guard.busyForMs(now) ?? 0;
    this.host.status({ fill: 'yellow', shape: 'ring', text: `capture busy for ${(busyMs / 1000).toFixed(1)} s: skipped ${this.guard.skippedWhileBusy} ticks` });
  }
}

/**
 * The status of a node with many cameras: how many there are and how many deliver, the ones that
 * do not by name, and the frame rate of all together, e.g.
 * "3 cameras · 2 online · offline: belt2 · 2.0 fps".
 */
export function summariseCameras(cameras: Pick<CameraRunner, 'id' | 'health' | 'meter'>[], now = Date.now()): NodeStatus {
  const by = (h: CameraHealth) => cameras.filter((c) => c.health === h);
  const online = by('online').length;
  const offline = by('offline').map((c) => c.id);
  const finished = by('finished').length;
  const stopped = by('stopped').length;
  const starting = by('starting').length;
  const parts = [`${cameras.length} camera${cameras.length === 1 ? '' : 's'}`, `${online} online`];
  if (offline.length) parts.push(`offline: ${offline.slice(0, 3).join(', ')}${offline.length > 3 ? ` +${offline.length - 3}` : ''}`);
  if (starting) parts.push(`${starting} starting`);
  if (stopped) parts.push(`${stopped} stopped`);
  if (finished) parts.push(`${finished} finished`);
  const fps = cameras.reduce((sum, c) => sum + c.meter.rate(now), 0);
  parts.push(`${fps.toFixed(1)} fps`);
  const text = parts.join(' · ').slice(0, 80);
  if (online + finished === cameras.length) return { fill: finished === cameras.length ? 'blue' : 'green', shape: 'dot', text };
  if (stopped === cameras.length) return { fill: 'grey', shape: 'ring', text };
  if (online === 0 && offline.length) return { fill: 'red', shape: 'ring', text };
  if (online === 0) return { fill: 'grey', shape: 'ring', text };
  return { fill: 'yellow', shape: 'ring', text };
}
