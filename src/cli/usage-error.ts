/** A bad command line: main prints its message as one `faultline: error:` line and exits 2. */
export class UsageError extends Error {}
