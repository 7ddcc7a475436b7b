package fairqueue

import (
	"errors"
	"fmt"
)

// Class is a priority class. A higher class is released before a lower one
// and shed after it.
type Class uint8

// The priority classes, lowest first.
const (
	// Sheddable is released last and refused first under overload.
	Sheddable Class = iota
	// Standard is the default class.
	Standard
	// Critical is released first and shed last.
	Critical
)

// NumClasses is the number of priority classes; arrays indexed by Class have
// this length.
const NumClasses = int(Critical) + 1

// ErrBadClass is returned for a class outside Sheddable..Critical.
var ErrBadClass = errors.New("fairqueue: unknown priority class")

// String returns the class's name as a Tenant's spec.priority spells it.
func (c Class) String() string {
	switch c {
	case Sheddable:
		return "sheddable"
	case Standard:
		return "standard"
	case Critical:
		return "critical"
	default:
		return fmt.Sprintf("Class(%d)", uint8(c))
	}
}

// ParseClass maps a Tenant's spec.priority ("critical", "standard",
// "sheddable"; empty means standard) to its Class.
func ParseClass(s string) (Class, error) {
	switch s {
	case "critical":
		return Critical, nil
	case "standard", "":
		return Standard, nil
	case "sheddable":
		return Sheddable, nil
	default:
		return Standard, fmt.Errorf("%w: %q", ErrBadClass, s)
	}
}
