// git's pkt-line framing (gitprotocol-common(5)): four hex digits of length, the payload's own four
// included; "0000" is the flush-pkt.

/** A whole pkt-line is at most this long (git's LARGE_PACKET_MAX), its payload four bytes less (LARGE_PACKET_DATA_MAX). */
export const PKT_MAX_BYTES = 65520;
export const MAX_PKT_PAYLOAD = PKT_MAX_BYTES - 4;

export const FLUSH_PKT = Buffer.from('0000', 'latin1');

/** `text` as one pkt-line. */
export function pktLine(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8');
  if (payload.length > MAX_PKT_PAYLOAD) throw new Error('pkt-line payload too long');
  return Buffer.concat([Buffer.from((payload.length + 4).toString(16).padStart(4, '0'), 'latin1'), payload]);
}
