package process

import "syscall"

// DieWithParent returns attr (a new one when nil) set so that the child
// process it starts dies with this one: the kernel sends the child SIGKILL
// when the thread that started it exits, even when this process is killed
// hard. On other systems it does nothing (see process_other.go).
func DieWithParent(attr *syscall.SysProcAttr) *syscall.SysProcAttr {
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Pdeathsig = syscall.SIGKILL
	return attr
}
