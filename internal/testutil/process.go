package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BuildPopgate builds the popgate command into dir and returns the path of
// the binary. Test binaries call it once, from TestMain.
func BuildPopgate(dir string) (string, error) {
	bin := filepath.Join(dir, "popgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/popgate/popgate/cmd/popgate").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/popgate: %v\n%s", err, out)
	}
	return bin, nil
}

// ProcOptions say how StartProc runs a process.
type ProcOptions struct {
	// LogFile, if set, receives stdout and stderr together (they are then
	// not kept in Stdout and Stderr); Output reads it.
	LogFile string
	// Graceful: at the end of the test a process still running gets
	// SIGTERM and 15 s to exit (a test error if it takes longer); otherwise
	// it is killed at once.
	Graceful bool
}

// Proc is a process started by a test; it does not outlive the test.
type Proc struct {
	Stdout, Stderr SyncBuffer // unless ProcOptions.LogFile is set
	cmd            *exec.Cmd
	logFile        string
	done           chan struct{}
	code           int
}

// StartProc starts bin with args until the end of t. When t fails, the
// process's output is logged.
func StartProc(t testing.TB, o ProcOptions, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{cmd: exec.Command(bin, args...), logFile: o.LogFile, done: make(chan struct{})}
	var logf *os.File
	if o.LogFile != "" {
		var err error
		if logf, err = os.Create(o.LogFile); err != nil {
			t.Fatal(err)
		}
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
	} else {
		p.cmd.Stdout, p.cmd.Stderr = &p.Stdout, &p.Stderr
	}
	err := p.cmd.Start()
	if logf != nil {
		logf.Close() // the child has its own descriptor
	}
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	name := filepath.Base(bin)
	if len(args) > 0 {
		name += " " + args[0]
	}
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			if o.Graceful {
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-p.done:
				case <-time.After(15 * time.Second):
					p.cmd.Process.Kill()
					<-p.done
					t.Errorf("%s did not exit within 15s of SIGTERM", name)
				}
			} else {
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.Output())
		}
	})
	return p
}

// Output returns what the process wrote so far, stdout then stderr (or
// the log file).
func (p *Proc) Output() string {
	if p.logFile != "" {
		b, _ := os.ReadFile(p.logFile)
		return string(b)
	}
	return p.Stdout.String() + p.Stderr.String()
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// WaitLog waits up to 60 s until the output holds want n times.
func (p *Proc) WaitLog(t testing.TB, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(p.Output(), want) >= n {
			return
		}
		select {
		case <-p.done:
			if strings.Count(p.Output(), want) >= n {
				return
			}
			t.Fatalf("process exited (status %d) before writing %q", p.code, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("process did not write %q within 60s", want)
}

// Wait waits up to 90 s for the process to exit and returns its status.
func (p *Proc) Wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(90 * time.Second):
		t.Fatalf("process did not exit")
		return -1
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// WaitGreeting waits up to 30 s until a POP3 server started as p greets on
// addr with +OK (it then QUITs that connection). It fails t if p exits
// first.
func (p *Proc) WaitGreeting(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, "QUIT\r\n")
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "+OK") {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("process exited at start (status %d):\n%s", p.code, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no POP3 greeting on %s within 30s:\n%s", addr, p.Output())
		}
		time.Sleep(25 * time.Millisecond)
	}
}
