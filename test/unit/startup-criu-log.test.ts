// The real-CRIU bench's start-up metrics from criu's own side: the time of the first "#PF" line of
// `criu lazy-pages -v4` (its timestamps count from criu's start), and the first hand-over
// ("Received PID") → that first fault.
import t from 'tap';
import { criuFirstFaultMs, criuHandoverToFirstFaultMs } from '../../bench/criu-scenarios';

const log = [
  '(00.000000) CRIU run id = e05afe49-e6db-4eac-b2dc-d77fc94ff016',
  '(00.000180) Version: 4.2 (gitid 0)',
  '(00.060000) uffd: Waiting for incoming connections on /w/lazy-pages.socket',
  '(00.070001) uffd: Received PID: 1, uffd: 11',
  '(00.071022) uffd: 1-11: 0x7f511bf18000/4096 -> lazy',
  '(00.155718) uffd: 1-11: #PF at 0x7f511bf18000',
  '(00.162453) uffd: 1-11: #PF at 0x7ffd7db04000',
  '(00.170000) uffd: Received PID: 2, uffd: 12',
  '(12.000001) uffd: 1-11: #PF at 0x7ffd7db06000',
].join('\n');

t.test('the first #PF line of a criu lazy-pages log, in ms since criu started', async (t) => {
  t.equal(criuFirstFaultMs(log), 155.718);
  t.equal(criuFirstFaultMs('(01.500000) uffd: 7-9: #PF at 0x1000\n'), 1500);
  t.equal(criuFirstFaultMs('(00.000000) CRIU run id = x\n(00.100000) Lazy pages daemon started\n'), undefined, 'no fault: no value');
  t.equal(criuFirstFaultMs(''), undefined);
});

t.test('first hand-over → first #PF of a criu lazy-pages log (issue 9: no later than criu)', async (t) => {
  t.equal(criuHandoverToFirstFaultMs(log), 85.717, 'from the first Received PID line, not a later one');
  t.equal(criuHandoverToFirstFaultMs('(01.216607) uffd: Received PID: 1, uffd: 12\n'), undefined, 'a drain: no fault, no value');
  t.equal(criuHandoverToFirstFaultMs('(01.230741) uffd: 1-12: #PF at 0x1000\n'), undefined, 'no hand-over line (not -v4): no value');
  t.equal(criuHandoverToFirstFaultMs(''), undefined);
});
