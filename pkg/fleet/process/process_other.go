//go:build !linux

package process

import "syscall"

// DieWithParent returns attr (a new one when nil) unchanged: only Linux can
// have the kernel kill a child when its parent dies (Pdeathsig). Elsewhere
// (macOS) children are stopped when Kvasir stops cleanly (Close, on SIGINT
// or SIGTERM), but outlive a Kvasir killed with SIGKILL.
func DieWithParent(attr *syscall.SysProcAttr) *syscall.SysProcAttr {
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	return attr
}
