//go:build !unix

package tlsconf

import "time"

func processCPU() time.Duration { return 0 }
