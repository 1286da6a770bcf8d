// Checks that this machine can do what a lazy restore needs, with a message that says what to change.
import * as fs from 'node:fs';
import { native } from '../native';

export function checkUffdAvailable(): void {
  try {
    const fd = native.uffdCreate(native.uffdConstants.O_CLOEXEC | native.uffdConstants.UFFD_USER_MODE_ONLY);
    native.closeFd(fd);
  } catch (e) {
    const code = (e as { code?: string }).code;
    let hint = '';
    if (code === 'EPERM') {
      let sysctl = '?';
      try {
        sysctl = fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
      } catch {
        // no such sysctl
      }
      hint = ` (vm.unprivileged_userfaultfd=${sysctl}: run as root, or with CAP_SYS_PTRACE, or set the sysctl to 1)`;
    } else if (code === 'ENOSYS') hint = ' (this kernel has no userfaultfd: CONFIG_USERFAULTFD is off)';
    throw Object.assign(new Error(`userfaultfd is not available here: ${code}${hint}`), { code: 'EUFFD' });
  }
}
