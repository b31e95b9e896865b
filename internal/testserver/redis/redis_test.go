package redis

import "testing"

func TestStartStopResume(t *testing.T) {
	s := Start(t, Options{Password: "pw"})
	if err := s.ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	s.Stop()
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if err := s.ping(); err == nil {
		t.Fatal("ping answered after Stop")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := s.ping(); err != nil {
		t.Fatalf("ping after Resume: %v", err)
	}
}

func TestWrongPasswordRefused(t *testing.T) {
	s := Start(t, Options{Password: "right"})
	s.opts.Password = "wrong"
	if err := s.ping(); err == nil {
		t.Fatal("ping with a wrong password succeeded")
	}
}
