/** ml-camera: emits JPEG frames with their metadata on an interval or when a message arrives. */
import sharp from 'sharp';
import { RateMeter } from '../lib/frame-queue';
import { ErrorThrottle, repeatSuffix } from '../lib/error-throttle';
import { describeReceived, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, textSetting } from '../lib/red-types';
import { CameraTiming, namedNumberSetting, readCameraTiming } from './camera-settings';
import { CaptureBusy, CaptureGuard } from './capture-guard';
import { FfmpegSource, LIVE_TIMINGS, liveFps, LiveOptions, LiveSource, MjpegSource } from './live-sources';
import {
  detectSourceType, FileSource, FolderSource, FrameSource, looksLikeMjpeg, normaliseToJpeg, redactUrl, SnapshotSource, SourceType, TestPatternSource,
} from './sources';

interface FrameInfo {
  camera: string;
  seq: number;
  capturedAt: string;
  width: number;
  height: number;
  origin: string;
  source: SourceType;
}

module.exports = function (RED: NodeAPI) {
  function MlCamera(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const cameraId = textSetting(config.cameraId) || 'cam1';
    const sourceSetting = textSetting(config.source);
    const configuredType = String(config.sourceType || 'auto');

    let timing: CameraTiming;
    try {
      timing = readCameraTiming(config);
    } catch (err) {
      // Refused, not patched with defaults: a node that runs with other settings than shown misleads.
      const problem = errorMessage(err);
      node.status({ fill: 'red', shape: 'ring', text: problem });
      node.error(`camera not started: ${problem}`);
      node.on('input', (_msg, _send, done) => done(new Error(`camera not started: ${problem}`)));
      return;
    }
    const { intervalMs, timeoutMs, watchdogMs, maxFps } = timing;
    const meter = new RateMeter();
    const guard = new CaptureGuard(timing.captureDeadlineMs);
    const errors = new ErrorThrottle(1000);
    let source: FrameSource | undefined;
    let opening: Promise<FrameSource> | undefined;
    let timer: NodeJS.Timeout | undefined;
    let running = intervalMs > 0;
    let closed = false;
    let seq = 0;
    let finished = false;
    let busyStatusAt = 0;
    const where = sourceSetting ? redactUrl(sourceSetting) : 'the test pattern';

    async function openSource(): Promise<FrameSource> {
      const type = configuredType === 'auto' ? await detectSourceType(sourceSetting) : (configuredType as SourceType);
      switch (type) {
        case 'pattern':
          return new TestPatternSource(namedNumberSetting(config, 'patternWidth', 640, 16, 4096, 'pixels'), namedNumberSetting(config, 'patternHeight', 480, 16, 4096, 'pixels'));
        case 'folder':
          return new FolderSource(sourceSetting, { loop: config.loop !== false, recursive: config.recursive !== false });
        case 'file':
          return new FileSource(sourceSetting);
        case 'url':
          return new SnapshotSource(sourceSetting, { username: node.credentials?.user, password: node.credentials?.password, timeoutMs });
        case 'mjpeg':
          return startLive(new MjpegSource(sourceSetting, liveOptions()));
        case 'rtsp':
        case 'v4l2':
          return startLive(new FfmpegSource({
            kind: type,
            url: sourceSetting,
            transport: config.transport === 'udp' ? 'udp' : 'tcp',
            fps: liveFps(intervalMs, maxFps),
            videoSize: textSetting(config.videoSize) || undefined,
            pixelFormat: textSetting(config.pixelFormat) || undefined,
            username: node.credentials?.user,
            password: node.credentials?.password,
          }, liveOptions(), textSetting(config.ffmpegPath) || 'ffmpeg'));
        default:
          throw new Error(`Expected sourceType of auto, folder, file, url, mjpeg, rtsp, v4l2 or pattern but received "${type}"`);
      }
    }

    function liveOptions(): LiveOptions {
      return { watchdogMs, ...LIVE_TIMINGS, username: node.credentials?.user, password: node.credentials?.password };
    }

    /** Raises an error at most once a second per message; repeats are counted in the status. */
    function raise(message: string, report: (message: string) => void): void {
      const decision = errors.check(message);
      node.status({ fill: 'red', shape: 'ring', text: message.slice(0, 70) + repeatSuffix(decision.count) });
      if (decision.raise) report(message);
    }

    /** Live sources run by themselves; their transitions go to the second output and the status. */
    function startLive(live: LiveSource): LiveSource {
      const event = (name: 'online' | 'offline', reason?: string) => {
        node.send([null, { topic: `${cameraId}/${name}`, payload: { event: name, camera: cameraId, reason, at: new Date().toISOString(), source: live.type } }]);
      };
      live.on('online', () => {
        event('online');
        node.status({ fill: 'green', shape: 'dot', text: `${live.type} online` });
      });
      live.on('offline', (reason: string) => {
        event('offline', reason);
        node.status({ fill: 'red', shape: 'ring', text: `offline: ${reason}`.slice(0, 80) });
      });
      live.on('problem', (err: Error) => raise(err.message, (m) => node.error(m, { topic: `${cameraId}/error`, payload: { event: 'error', camera: cameraId, reason: m } })));
      node.status({ fill: 'yellow', shape: 'ring', text: `connecting to ${live.type}` });
      live.start();
      return live;
    }

    function getSource(): Promise<FrameSource> {
      if (source) return Promise.resolve(source);
      opening ??= openSource().then((s) => {
        source = s;
        return s;
      }).finally(() => { opening = undefined; });
      return opening;
    }

    /** A frame message; null when a finite source is exhausted, undefined when a live one has nothing new. */
    async function capture(trigger: NodeMessage | undefined, signal: AbortSignal): Promise<NodeMessage | null | undefined> {
      const src = await getSource();
      const raw = src instanceof LiveSource && trigger ? await src.waitForFrame(timeoutMs, signal) : await src.next(signal);
      if (raw === undefined && src instanceof LiveSource && trigger && !signal.aborted) {
        throw new Error(`no frame from the ${src.type} camera within ${timeoutMs} ms (${src.state})`);
      }
      if (!raw) return raw;
      let image: Buffer;
      let meta: sharp.Metadata;
      try {
        image = await normaliseToJpeg(raw.image);
        meta = await sharp(image).metadata();
      } catch (err) {
        throw new Error(`frame from ${raw.origin} is not a readable image: ${errorMessage(err)}`);
      }
      const frame: FrameInfo = {
        camera: cameraId,
        seq: ++seq,
        capturedAt: new Date().toISOString(),
        width: meta.width ?? 0,
        height: meta.height ?? 0,
        origin: raw.origin,
        source: src.type,
      };
      const msg: NodeMessage = trigger ?? {};
      msg.payload = image;
      msg.frame = frame;
      msg.topic = msg.topic ?? cameraId;
      return msg;
    }

    function showStatus(src: FrameSource) {
      const shortWhere = sourceSetting ? redactUrl(sourceSetting).split('/').slice(-2).join('/') : 'test pattern';
      const parts = [`${meter.rate().toFixed(1)} fps`, `#${seq}`];
      if (src instanceof LiveSource) parts.unshift(src.state);
      if (guard.skippedTotal) parts.push(`skipped ${guard.skippedTotal}`);
      node.status({ fill: 'green', shape: 'dot', text: `${shortWhere} · ${parts.join(' · ')}`.slice(0, 80) });
    }

    /** A skipped tick is no fault, but a capture that blocks ticks must be visible (at most 4 updates a second). */
    function showBusy() {
      const now = Date.now();
      if (now - busyStatusAt < 250) return;
      busyStatusAt = now;
      const busyMs = guard.busyForMs(now) ?? 0;
      node.status({ fill: 'yellow', shape: 'ring', text: `capture busy for ${(busyMs / 1000).toFixed(1)} s: skipped ${guard.skippedWhileBusy} ticks` });
    }

    /** One capture at a time, within the capture deadline; a tick that finds one running is skipped (CaptureBusy). */
    async function tick(trigger: NodeMessage | undefined, send: (m: (NodeMessage | null)[]) => void): Promise<void> {
      const msg = await guard.run(() => where, (signal) => capture(trigger, signal));
      if (closed || msg === undefined) return;
      if (!msg) {
        finished = true;
        stopTimer();
        node.status({ fill: 'blue', shape: 'dot', text: `finished: ${seq} frames` });
        return;
      }
      meter.tick();
      if (source) showStatus(source);
      send([msg, null]);
    }

    function startTimer() {
      stopTimer();
      if (intervalMs <= 0 || closed) return;
      running = true;
      timer = setInterval(() => {
        tick(undefined, (m) => node.send(m)).catch((err) => {
          if (closed) return;
          if (err instanceof CaptureBusy) return showBusy();
          raise(errorMessage(err), (m) => node.error(m, { topic: `${cameraId}/error`, payload: { event: 'error', camera: cameraId, reason: m } }));
        });
      }, intervalMs);
    }

    function stopTimer() {
      running = false;
      if (timer) clearInterval(timer);
      timer = undefined;
    }

    node.on('input', async (msg, send, done) => {
      if (msg.command !== undefined && msg.command !== null && typeof msg.command !== 'string') {
        // Taken as a plain trigger, {stop: true} would capture a frame instead of stopping.
        return done(new Error(`Expected msg.command of start, stop or restart but received ${describeReceived(msg.command)}`));
      }
      const command = typeof msg.command === 'string' ? msg.command : undefined;
      if (command === 'stop') {
        stopTimer();
        node.status({ fill: 'grey', shape: 'ring', text: 'stopped' });
        return done();
      }
      if (command === 'start' || command === 'restart') {
        if (command === 'restart') {
          source?.rewind();
          finished = false;
        }
        startTimer();
        return done();
      }
      if (command !== undefined) return done(new Error(`Expected msg.command of start, stop or restart but received "${command}"`));
      if (finished || closed) return done();
      try {
        await tick(msg, send);
        done();
      } catch (err) {
        if (err instanceof CaptureBusy) {
          showBusy();
          return done(); // deliberate drop, counted in the status
        }
        // Repeats within a second complete without raising again: their count is in the status.
        let raised = false;
        raise(errorMessage(err), () => { raised = true; });
        done(raised ? (err as Error) : undefined);
      }
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      closed = true;
      stopTimer();
      guard.abort(new Error('the camera node is closing'));
      // A source still opening is closed once open; live sources resolve once their ffmpeg has exited.
      Promise.resolve(opening?.catch(() => undefined))
        .then(() => {
          const closing = source;
          source = undefined;
          return closing?.close();
        })
        .then(() => done(), () => done());
    });

    // Live cameras connect at deploy so the first frame is ready by the first tick.
    const liveType = ['rtsp', 'v4l2', 'mjpeg'].includes(configuredType);
    if (liveType || (configuredType === 'auto' && (/^(rtsps?:|\/dev\/video)/i.test(sourceSetting) || (/^https?:/i.test(sourceSetting) && looksLikeMjpeg(sourceSetting))))) {
      getSource().catch((err) => raise(errorMessage(err), (m) => node.error(m, { topic: `${cameraId}/error`, payload: { event: 'error', camera: cameraId, reason: m } })));
    }

    if (running) {
      node.status({ fill: 'grey', shape: 'ring', text: 'starting' });
      startTimer();
    } else {
      node.status({ fill: 'grey', shape: 'ring', text: 'waiting for trigger' });
    }
  }

  RED.nodes.registerType('ml-camera', MlCamera, {
    credentials: { user: { type: 'text' }, password: { type: 'password' } },
  });
};
