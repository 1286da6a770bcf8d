import * as path from 'path';

/**
 * A problem with a CRIU image file. `message` is a single line that starts with the file
 * name so an operator can find the culprit without a stack trace.
 */
export class ImageError extends Error {
  override name = 'ImageError';
  /** Absolute (or as-given) path of the offending file. */
  readonly file: string;
  /** Protobuf field or entry the problem is about, when there is one. */
  readonly field?: string;

  constructor(file: string, detail: string, opts: { field?: string; display?: string; cause?: unknown } = {}) {
    const shown = opts.display ?? path.basename(file);
    // Multi-line details would break log lines and the CLI's one-line error output.
    super(`${shown}: ${detail}`.replace(/\s*\n\s*/g, '; '), opts.cause === undefined ? undefined : { cause: opts.cause });
    this.file = file;
    if (opts.field !== undefined) this.field = opts.field;
  }
}
