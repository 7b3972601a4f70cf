// Command connwarden is a host agent that traces connections in the kernel,
// detects abuse with YAML rules and drops offenders' packets with XDP.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "connwarden: the agent is not wired yet (see issue #4)")
	os.Exit(1)
}
