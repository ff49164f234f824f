/** HTTP Digest authentication (RFC 7616, MD5 and SHA-256, qop=auth), as IP cameras ask for it. */
import { createHash, randomBytes } from 'crypto';

export interface DigestChallenge {
  realm: string;
  nonce: string;
  qop?: string;
  opaque?: string;
  algorithm: string;
}

export function parseDigestChallenge(header: string | string[] | undefined): DigestChallenge | undefined {
  const values = Array.isArray(header) ? header : header ? [header] : [];
  const digest = values.find((v) => /^digest\s/i.test(v));
  if (!digest) return undefined;
  const params: Record<string, string> = {};
  for (const m of digest.slice(7).matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]*))/g)) params[m[1].toLowerCase()] = m[2] ?? m[3];
  if (!params.nonce) return undefined;
  return { realm: params.realm ?? '', nonce: params.nonce, qop: params.qop, opaque: params.opaque, algorithm: params.algorithm ?? 'MD5' };
}

export function digestAuthorization(challenge: DigestChallenge, method: string, uri: string, username: string, password: string, nonceCount = 1): string {
  const algorithm = challenge.algorithm.toUpperCase().replace(/-SESS$/, '');
  const hashName = algorithm === 'SHA-256' ? 'sha256' : 'md5';
  const hash = (s: string) => createHash(hashName).update(s).digest('hex');
  const cnonce = randomBytes(8).toString('hex');
  const nc = nonceCount.toString(16).padStart(8, '0');
  let ha1 = hash(`${username}:${challenge.realm}:${password}`);
  if (/-sess$/i.test(challenge.algorithm)) ha1 = hash(`${ha1}:${challenge.nonce}:${cnonce}`);
  const ha2 = hash(`${method}:${uri}`);
  const qop = challenge.qop?.split(',').map((q) => q.trim()).includes('auth') ? 'auth' : undefined;
  const response = qop ? hash(`${ha1}:${challenge.nonce}:${nc}:${cnonce}:${qop}:${ha2}`) : hash(`${ha1}:${challenge.nonce}:${ha2}`);
  const parts = [`username="${username}"`, `realm="${challenge.realm}"`, `nonce="${challenge.nonce}"`, `uri="${uri}"`, `algorithm=${challenge.algorithm}`, `response="${response}"`];
  if (qop) parts.push(`qop=${qop}`, `nc=${nc}`, `cnonce="${cnonce}"`);
  if (challenge.opaque !== undefined) parts.push(`opaque="${challenge.opaque}"`);
  return `Digest ${parts.join(', ')}`;
}
