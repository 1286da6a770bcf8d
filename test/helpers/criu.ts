// Tests that need the real CRIU: skipped, with the reason, where it is missing. The reason always
// starts with CRIU_SKIP_PREFIX: scripts/run-tests.mjs fails the run when such a test was skipped on a
// machine that has ../shared/criu (CI), where they must run.
import { findCriu, type CriuFound } from '../../src/criu/find';

export const CRIU_SKIP_PREFIX = 'needs real CRIU';

/** false when criu >= 4 is available, else the skip reason for tap's `skip` option. */
export function criuSkip(): string | false {
  const { found, why } = findCriu();
  return found ? false : `${CRIU_SKIP_PREFIX}: ${why}`;
}

/** The criu to run (call only in a test that was not skipped by criuSkip()). */
export function criu(): CriuFound {
  const { found, why } = findCriu();
  if (!found) throw new Error(why);
  return found;
}
