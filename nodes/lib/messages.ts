/**
 * The properties the collection's nodes put on a message, defined once: every node and formatter
 * reads and writes them through these types, and the README and the nodes' help describe them.
 *
 *   ml-camera      msg.payload = JPEG Buffer, msg.frame (FrameInfo); events: msg.payload (CameraEvent)
 *   ml-preprocess  msg.payload = tensor, msg.image = the JPEG, msg.preprocess (PreprocessInfo)
 *   ml-inference   msg.payload = Classification | DetectionResult (arrays for a batch), msg.inference
 *   ml-route       msg.payload.bin, msg.route (RouteInfo)
 */
import type { Classification, Prediction } from './classification';
import type { Detection, DetectionResult } from './detection';
import type { RegionOfInterest, ResizeGeometry } from './preprocess-spec';
import type { NodeMessage } from './red-types';

export type { Classification, Prediction, Detection, DetectionResult };

/** Where a frame came from (ml-camera's source types). */
export type SourceType = 'pattern' | 'folder' | 'file' | 'url' | 'mjpeg' | 'rtsp' | 'v4l2';

/** msg.frame: set by ml-camera, carried unchanged by every later node. */
export interface FrameInfo {
  camera: string;
  /** 1, 2, 3... per camera since the node started. */
  seq: number;
  /** ISO 8601, milliseconds, UTC. */
  capturedAt: string;
  width: number;
  height: number;
  /** File path or URL (credentials removed). */
  origin: string;
  source: SourceType;
}

/** msg.payload of ml-camera's second output. */
export interface CameraEvent {
  event: 'online' | 'offline' | 'error';
  camera: string;
  reason?: string;
  at?: string;
  source?: SourceType;
}

/** msg.preprocess: set by ml-preprocess. */
export interface PreprocessInfo {
  ms: number;
  sourceWidth: number;
  sourceHeight: number;
  width: number;
  height: number;
  roi?: RegionOfInterest;
  resize: string;
  /** Which part of the frame went where in the model input (boxes are mapped back with it). */
  geometry: ResizeGeometry;
}

/** msg.inference: set by ml-inference. */
export interface InferenceInfo {
  /** File name of the model. */
  model: string;
  /** Time of the model run (the whole batch when frames shared it). */
  ms: number;
  /** How many frames shared the run. */
  batch: number;
  queueMs: number;
  totalMs: number;
  /** Frames of this camera dropped so far because newer ones came while the model was busy. */
  dropped: number;
}

/** msg.route: set by ml-route. */
export interface RouteInfo {
  bin: string;
  /** The output it left by (null while waiting for agreement). */
  output: number | null;
  reason: string;
  threshold?: number;
  agreeing?: number;
}

/** The frame a message belongs to, if it carries one (a message from elsewhere may not). */
export function frameOf(msg: NodeMessage): Partial<FrameInfo> | undefined {
  const frame = (msg as { frame?: unknown }).frame;
  return frame && typeof frame === 'object' ? (frame as Partial<FrameInfo>) : undefined;
}

/** The camera a message's frame came from, as a lane key ('' when none). */
export function cameraOf(msg: NodeMessage): string {
  const camera = frameOf(msg)?.camera;
  return camera === undefined || camera === null ? '' : String(camera);
}
