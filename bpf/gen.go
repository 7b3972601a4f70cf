package bpf

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type event -type kind -type direction connect connect.bpf.c -- -I./include -Wall -Werror
