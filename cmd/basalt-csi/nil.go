package main

import (
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/driver"
)

// controllerOrNil and nodeOrNil avoid registering a typed nil pointer as a
// service (a non-nil interface holding nil would be registered and panic).
func controllerOrNil(c *driver.Controller) csi.ControllerServer {
	if c == nil {
		return nil
	}
	return c
}

func nodeOrNil(n *driver.Node) csi.NodeServer {
	if n == nil {
		return nil
	}
	return n
}
