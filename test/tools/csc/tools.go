//go:build tools

// Package tools pins the csc CSI command-line client (from github.com/dell/gocsi)
// used by test/build-csc.sh.
package tools

import _ "github.com/dell/gocsi/csc"
