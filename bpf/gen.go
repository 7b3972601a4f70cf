package bpf

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type event -type auth_event -type kind -type direction connect connect.bpf.c -- -I./include -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 pam pam.bpf.c -- -I./include -Wall -Werror
//go:generate go tool bpf2go -go-package bpf -target bpfel -type bl_value -type bl_lpm_v4_key -type bl_lpm_v6_key -type bl_v6_addr -type bl_allow_value -type bl_counter -type bl_slot_bits -type bl_slot_set blocklist blocklist.bpf.c -- -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu
