/**
 * The properties the collection's nodes put on a message, defined once: every node and formatter
 * reads and writes them through these types, and the README and the nodes' help describe them.
 *
 *   ml-camera      msg.payload = JPEG Buffer, msg.frame (FrameInfo); events: msg.payload (CameraEvent)
 *   ml-preprocess  msg.payload = tensor, msg.image = the JPEG, msg.preprocess (PreprocessInfo)
 *   ml-inference   msg.payload = Classification | DetectionResult (arrays for a batch), msg.inference
 *   ml-route       msg.payload.bin, msg.route (RouteInfo)
 *   ml-track       items: msg.payload (CountedItem); counts: msg.payload (CountReport);
 *                  frames: msg.payload.detections[i].track, msg.tracks (TrackInfo[])
 */
import type { Classification, Prediction } from './classification';
import type { Box, Detection, DetectionResult } from './detection';
import type { RegionOfInterest, ResizeGeometry } from './preprocess-spec';
import type { NodeMessage } from './red-types';

export type { Classification, Prediction, Box, Detection, DetectionResult };

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

/** msg.tracks on ml-track's frame output: every live track of the frame's camera. */
export interface TrackInfo {
  /** 1, 2, 3... per camera since the node started. */
  track: number;
  /** The score-weighted vote over all the track's detections. */
  label: string;
  /** Mean score of the winning label's detections. */
  score: number;
  /** Where it was last seen, in frame pixels. */
  box: Box;
  /** Frames it was detected in. */
  hits: number;
  /** Frames since it was last detected (0: in this frame). */
  missed: number;
  counted: boolean;
}

/** msg.payload of ml-track's first output: one per counted item (published to <prefix>/<camera>/item). */
export interface CountedItem {
  /** `<camera>-<capture ms>-<seq>-t<track>`: the frame's result id with the track, unique per item. */
  id: string;
  camera: string;
  track: number;
  label: string;
  score: number;
  /** The item in the frame it was counted in (its last detection), in frame pixels. */
  box: Box;
  frameSeq: number;
  capturedAt: string;
}

/** msg.payload of ml-track's second output: items counted per label over [from, to] (ISO 8601). */
export interface CountReport {
  camera: string;
  from: string;
  to: string;
  counts: Record<string, number>;
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
