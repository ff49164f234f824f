/**
 * Authentication of HTTP cameras (snapshot and MJPEG) that never sends credentials in the clear
 * before the camera asks: over http:// the first request carries no Authorization header, and a 401
 * challenge is answered with the scheme it names (Digest preferred, else Basic). Pre-emptive Basic
 * is sent only over https://, where it is encrypted. Once a camera has asked, later requests answer
 * its last challenge directly (a digest with the next nonce count), so each frame costs one request.
 */
import { DigestChallenge, digestAuthorization, parseDigestChallenge } from './digest-auth';

export function basicAuthorization(username: string, password = ''): string {
  return 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64');
}

export type ChallengeAnswer = 'retry' | 'no-credentials' | 'refused';

export class HttpCameraAuth {
  private scheme?: { kind: 'basic' } | { kind: 'digest'; challenge: DigestChallenge };
  private nonceCount = 0;

  constructor(private readonly username: string | undefined, private readonly password: string, private readonly secure: boolean) {}

  get hasCredentials(): boolean {
    return Boolean(this.username);
  }

  /** The Authorization header for the next request, or undefined when none should be sent yet. */
  header(method: string, uri: string): string | undefined {
    if (!this.username) return undefined;
    if (this.scheme?.kind === 'digest') return digestAuthorization(this.scheme.challenge, method, uri, this.username, this.password, ++this.nonceCount);
    if (this.scheme?.kind === 'basic' || this.secure) return basicAuthorization(this.username, this.password);
    return undefined;
  }

  /**
   * The camera answered 401 with this WWW-Authenticate. 'retry' when a request answering the new
   * challenge is worth sending; 'refused' when the credentials were sent and the camera still says
   * no (not a stale nonce); 'no-credentials' when the camera needs some and none are set.
   * @param sentAuthorization whether the refused request carried an Authorization header
   */
  challenge(wwwAuthenticate: string | string[] | undefined, sentAuthorization: boolean): ChallengeAnswer {
    // (pass res.headersDistinct['www-authenticate']: Node joins repeated headers into one string)
    if (!this.username) return 'no-credentials';
    const values = Array.isArray(wwwAuthenticate) ? wwwAuthenticate : wwwAuthenticate ? [wwwAuthenticate] : [];
    const digest = parseDigestChallenge(values);
    const stale = values.some((v) => /^digest\s/i.test(v) && /stale\s*=\s*"?true/i.test(v));
    const previous = this.scheme;
    if (digest) {
      this.scheme = { kind: 'digest', challenge: digest };
      this.nonceCount = 0;
      // Our digest was rejected: final unless the camera only renewed its nonce (stale, or a new one).
      if (sentAuthorization && previous?.kind === 'digest' && !stale && previous.challenge.nonce === digest.nonce) return 'refused';
      return 'retry';
    }
    if (values.length === 0 || values.some((v) => /^basic(\s|$)/i.test(v))) {
      // A 401 without any challenge is taken as a request for Basic, the only scheme without parameters.
      this.scheme = { kind: 'basic' };
      // Basic was sent (asked for before, or pre-emptively over https) and rejected: final.
      if (sentAuthorization && (previous?.kind === 'basic' || (this.secure && !previous))) return 'refused';
      return 'retry';
    }
    return 'refused'; // a scheme we cannot answer (NTLM, Bearer...)
  }
}
