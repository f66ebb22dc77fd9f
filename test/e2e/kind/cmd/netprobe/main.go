// netprobe: tries a TCP connection to each ADDRESS:PORT argument with a timeout and prints one
// line per address, "reached" or "blocked: <error>". Exit status 0 when every address is
// blocked, 1 when any was reached, 2 on bad usage. The kind end-to-end test runs it in a pod to
// check that the fence stops traffic to addresses outside the machine.
package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netprobe ADDRESS:PORT...")
		os.Exit(2)
	}
	reached := false
	for _, addr := range os.Args[1:] {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			conn.Close()
			reached = true
			fmt.Printf("%s reached\n", addr)
			continue
		}
		fmt.Printf("%s blocked: %v\n", addr, err)
	}
	if reached {
		os.Exit(1)
	}
}
