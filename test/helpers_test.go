package test

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// runHelper is the body of a re-executed test binary (see TestMain).
//
//	pivot: listen on CW_LISTEN, accept one connection, then connect to
//	       CW_TARGET (a service that, once reached, reaches further in).
//	flood: listen on CW_LISTEN and make CW_COUNT connections to it, for at
//	       most 10 seconds.
func runHelper(name string) int {
	switch name {
	case "pivot":
		ln, err := net.Listen("tcp", os.Getenv("CW_LISTEN"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening") // the test waits for this line
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
		out, err := net.DialTimeout("tcp", os.Getenv("CW_TARGET"), 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		out.Close()
		return 0
	case "flood":
		n, _ := strconv.Atoi(os.Getenv("CW_COUNT"))
		ln, err := net.Listen("tcp", os.Getenv("CW_LISTEN"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < n && time.Now().Before(deadline); i++ {
			if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				c.Close()
			}
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
	return 2
}
