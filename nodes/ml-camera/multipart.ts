/**
 * Incremental parser for multipart/x-mixed-replace JPEG streams: what MJPEG cameras send over HTTP
 * and what ffmpeg's mpjpeg muxer writes. Uses each part's Content-Length when given, otherwise the
 * next boundary. Memory stays bounded: a part larger than maxPartBytes is an error.
 */
const CRLF2 = Buffer.from('\r\n\r\n');

export class MultipartJpegParser {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly delimiter: Buffer;
  private expectedLength: number | undefined;
  private inBody = false;

  /**
   * @param onSkipped called with each part that is not a JPEG (it is not passed on): a camera that
   *   sends only such parts must be reported, not wait silently for a frame that never comes
   */
  constructor(
    boundary: string,
    private readonly onPart: (jpeg: Buffer) => void,
    private readonly maxPartBytes = 16 * 1024 * 1024,
    private readonly onSkipped?: (part: Buffer) => void,
  ) {
    this.delimiter = Buffer.from(`--${boundary.replace(/^--/, '')}`);
  }

  push(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      if (!this.inBody) {
        const start = this.buffer.indexOf(this.delimiter);
        if (start < 0) {
          // keep only a tail that could hold the start of a delimiter
          if (this.buffer.length > this.delimiter.length) this.buffer = this.buffer.subarray(this.buffer.length - this.delimiter.length);
          return;
        }
        const headerEnd = this.buffer.indexOf(CRLF2, start);
        if (headerEnd < 0) {
          if (this.buffer.length - start > 8192) throw new Error('multipart part headers are longer than 8 KiB: not an MJPEG stream');
          return;
        }
        const headers = this.buffer.subarray(start + this.delimiter.length, headerEnd).toString('latin1');
        const length = /content-length:\s*(\d+)/i.exec(headers);
        this.expectedLength = length ? Number(length[1]) : undefined;
        if (this.expectedLength !== undefined && this.expectedLength > this.maxPartBytes) {
          throw new Error(`an MJPEG frame of ${this.expectedLength} bytes is larger than the ${this.maxPartBytes}-byte limit`);
        }
        this.buffer = this.buffer.subarray(headerEnd + CRLF2.length);
        this.inBody = true;
      }
      let body: Buffer;
      if (this.expectedLength !== undefined) {
        if (this.buffer.length < this.expectedLength) return;
        body = this.buffer.subarray(0, this.expectedLength);
        this.buffer = this.buffer.subarray(this.expectedLength);
      } else {
        const end = this.buffer.indexOf(this.delimiter);
        if (end < 0) {
          if (this.buffer.length > this.maxPartBytes) throw new Error(`an MJPEG frame is larger than the ${this.maxPartBytes}-byte limit (or the boundary is wrong)`);
          return;
        }
        body = this.buffer.subarray(0, end);
        this.buffer = this.buffer.subarray(end);
        while (body.length && (body[body.length - 1] === 0x0a || body[body.length - 1] === 0x0d)) body = body.subarray(0, body.length - 1);
      }
      this.inBody = false;
      // Copy so the frame does not pin the whole read buffer.
      if (body.length > 2 && body[0] === 0xff && body[1] === 0xd8) this.onPart(Buffer.from(body));
      else this.onSkipped?.(body);
    }
  }
}

/** The boundary of a multipart Content-Type, or undefined when it is not multipart. */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^multipart\//i.test(contentType)) return undefined;
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  return m ? m[1].trim() : undefined;
}
