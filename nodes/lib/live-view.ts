/**
 * The live view in the editor: the newest annotated frame of a node, as a small thumbnail under the
 * node in the flow (as node-red-contrib-image-output shows images).
 *
 * Frames travel over Node-RED's comms (the editor's WebSocket), which only carries messages to
 * editor sessions that passed the editor's authentication (adminAuth). Comms sends every message
 * to every connection, so frames are sent per session instead, and only to sessions that
 * - said they show the live view (the editor code of ml-annotate sends `ml-live-view-viewer` when it
 *   connects, and again when its tab is hidden or shown), and
 * - belong to a user allowed to read flows (`flows.read`; everyone when the editor has no login).
 *
 * Cost when no such editor is open: a lookup in a small map per frame. Otherwise the node's
 * throttle decides first, and only a frame that is due is downscaled and encoded.
 */
import sharp from 'sharp';

/** Frames of node <id> go to the editor on `ml-live-view/<id>`. */
export const FRAME_TOPIC = 'ml-live-view';
/** The editor tells the runtime it shows live views (data: {visible: boolean}). */
export const VIEWER_TOPIC = 'ml-live-view-viewer';
/** The Node-RED setting that switches the live view off for the whole runtime (false or "off"). */
export const RUNTIME_SETTING = 'mlAnnotateLiveView';
export const DEFAULT_RATE = 2;
/** At most 2 updates per second per node: a live view, not a video stream. */
export const MAX_RATE = 2;
export const DEFAULT_SIZE = 160;
export const MAX_SIZE = 320;

/**
 * At most one frame per interval, and none while the previous one is still being encoded: the
 * decision is made before any work on the frame. The interval counts from when the previous frame
 * was sent, so frames leave at least an interval apart however long each took to encode.
 */
export class LiveViewThrottle {
  private last = -Infinity;
  private busy = false;

  constructor(readonly intervalMs: number, private readonly now: () => number = Date.now) {}

  /** True when a frame may be shown now; the caller then shows it and calls done() once it is sent (or dropped). */
  take(): boolean {
    if (this.busy || this.now() - this.last < this.intervalMs) return false;
    this.busy = true;
    return true;
  }

  done(): void {
    this.busy = false;
    this.last = this.now();
  }
}

/** Node-RED's permission check (editor-api auth/permissions): may a user with this scope do `permission`? */
export function hasPermission(scope: unknown, permission: string): boolean {
  if (Array.isArray(scope)) return scope.some((s) => hasPermission(s, permission));
  if (scope === '*' || scope === permission) return true;
  if (scope === 'read' || scope === '*.read') return /^((.+)\.)?read$/.test(permission);
  if (scope === 'write' || scope === '*.write') return /^((.+)\.)?write$/.test(permission);
  return false;
}

/**
 * May this comms user see frames? A connection has no user only when the editor has no login
 * (with adminAuth, comms hold a connection back until it authenticates, as the anonymous `default`
 * user or a real one); then everyone may read the flows.
 */
export function mayView(user: unknown): boolean {
  if (user === null || user === undefined) return true;
  return hasPermission((user as { permissions?: unknown }).permissions, 'flows.read');
}

/** Is the live view allowed by the runtime's settings? false / "off" / "false" / 0 switch it off. */
export function liveViewAllowed(settings: Record<string, unknown> | undefined): boolean {
  const value = settings?.[RUNTIME_SETTING];
  if (value === undefined || value === null) return true;
  return !(value === false || value === 0 || /^(off|false|no|0)$/i.test(String(value).trim()));
}

/** The slice of Node-RED's event bus (RED.events) the live view uses. */
export interface EventBus {
  on(event: string, listener: (...args: any[]) => void): unknown;
  emit(event: string, ...args: unknown[]): unknown;
}

interface Viewer {
  allowed: boolean;
  visible: boolean;
}

/** The editor sessions that want frames; one per runtime (per event bus). */
export class LiveViewHub {
  private readonly sessions = new Map<string, Viewer>();

  constructor(private readonly events: EventBus) {
    events.on(`comms:message:${VIEWER_TOPIC}`, (event: { session?: string; user?: unknown; data?: { visible?: unknown } }) => {
      if (!event || typeof event.session !== 'string') return;
      this.sessions.set(event.session, { allowed: mayView(event.user), visible: event.data?.visible !== false });
    });
    // A connection that logs in (or is authenticated again) is added again, with its new user.
    events.on('comms:connection-added', (event: { session?: string; user?: unknown }) => {
      const viewer = event && typeof event.session === 'string' ? this.sessions.get(event.session) : undefined;
      if (viewer) viewer.allowed = mayView(event.user);
    });
    events.on('comms:connection-removed', (event: { session?: string }) => {
      if (event && typeof event.session === 'string') this.sessions.delete(event.session);
    });
  }

  /** Sessions to send frames to: they show live views, are visible, and may read flows. */
  viewers(): string[] {
    const out: string[] = [];
    for (const [session, v] of this.sessions) if (v.allowed && v.visible) out.push(session);
    return out;
  }

  hasViewers(): boolean {
    for (const v of this.sessions.values()) if (v.allowed && v.visible) return true;
    return false;
  }

  /** Sends data on `ml-live-view/<nodeId>` to each viewer (never retained: a new editor waits for the next frame). */
  publish(nodeId: string, data: Record<string, unknown>, sessions: string[] = this.viewers()): void {
    for (const session of sessions) {
      this.events.emit('comms', { topic: `${FRAME_TOPIC}/${nodeId}`, data, retain: false, session });
    }
  }
}

const hubs = new WeakMap<object, LiveViewHub>();

/** The hub of this runtime (created on first use; node modules loaded separately share it). */
export function liveViewHub(events: EventBus): LiveViewHub {
  let hub = hubs.get(events);
  if (!hub) {
    hub = new LiveViewHub(events);
    hubs.set(events, hub);
  }
  return hub;
}

/** A thumbnail of at most size x size pixels, as JPEG, of an image (EXIF orientation applied). */
export async function thumbnail(image: Buffer, size: number): Promise<{ image: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(image, { limitInputPixels: 100_000_000 })
    .rotate()
    .resize(size, size, { fit: 'inside', withoutEnlargement: true, fastShrinkOnLoad: true })
    .jpeg({ quality: 70 })
    .toBuffer({ resolveWithObject: true });
  return { image: data, width: info.width, height: info.height };
}

export interface LiveViewOptions {
  /** Updates per second at most. */
  rate: number;
  /** Longest side of the thumbnail in pixels. */
  size: number;
  now?: () => number;
}

/** The live view of one node. */
export class NodeLiveView {
  private readonly throttle: LiveViewThrottle;
  /** Frames shown (sent to at least one editor), for tests and statistics. */
  shown = 0;
  private closed = false;

  constructor(private readonly hub: LiveViewHub, private readonly nodeId: string, private readonly options: LiveViewOptions) {
    this.throttle = new LiveViewThrottle(1000 / options.rate, options.now);
  }

  /**
   * Offers a frame: shown when an editor is watching and the node's interval has passed, else
   * dropped without touching it. Never throws (the live view must not disturb the flow); resolves
   * once the frame is sent or dropped.
   */
  async offer(image: Buffer): Promise<void> {
    if (!this.hub.hasViewers() || !this.throttle.take()) return;
    try {
      const thumb = await thumbnail(image, this.options.size);
      const sessions = this.hub.viewers(); // whoever is still watching after the encoding
      // A frame still encoding when its node closed (a redeploy, perhaps one that switched the view off) is not shown.
      if (!sessions.length || this.closed) return;
      this.hub.publish(this.nodeId, { id: this.nodeId, image: thumb.image.toString('base64'), type: 'image/jpeg', width: thumb.width, height: thumb.height, at: Date.now() }, sessions);
      this.shown++;
    } catch {
      // An undecodable frame: the node itself reports what is wrong with its input.
    } finally {
      this.throttle.done();
    }
  }

  /** The node closed: frames still being encoded are dropped. */
  close(): void {
    this.closed = true;
  }

  /** Tells the editors to remove this node's image (the live view was switched off, or the node removed). */
  clear(): void {
    const sessions = this.hub.viewers();
    if (sessions.length) this.hub.publish(this.nodeId, { id: this.nodeId, clear: true }, sessions);
  }
}
