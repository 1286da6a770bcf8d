/** The restorer broke the hand-over protocol (criu-lazy-pages.md §2). Names the socket and peer. */
export class HandoverProtocolError extends Error {
  override name = 'HandoverProtocolError';
}

/** Something that forces the daemon to stop the restored tree; the message says why, in one line. */
export class FailStop extends Error {
  override name = 'FailStop';
}
