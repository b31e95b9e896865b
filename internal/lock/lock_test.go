package lock

import (
	"context"
	"errors"
	"sync"
	"testing"
)

func TestLocalExclusiveAndReleasable(t *testing.T) {
	l := NewLocal()
	ctx := context.Background()
	release, err := l.TryLock(ctx, "corp/alice")
	if err != nil {
		t.Fatalf("first TryLock: %v", err)
	}
	if _, err := l.TryLock(ctx, "corp/alice"); !errors.Is(err, ErrHeld) {
		t.Fatalf("second TryLock of a held key: %v, want ErrHeld", err)
	}
	// Another maildrop is independent.
	rb, err := l.TryLock(ctx, "corp/bob")
	if err != nil {
		t.Fatalf("TryLock of another key: %v", err)
	}
	rb()
	release()
	release() // harmless twice; must not free a later holder's lock
	r2, err := l.TryLock(ctx, "corp/alice")
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	release()
	if !l.Held("corp/alice") {
		t.Fatal("a stale release freed the new holder's lock")
	}
	r2()
	if l.Held("corp/alice") {
		t.Fatal("lock still held after release")
	}
}

func TestLocalConcurrentOneWinner(t *testing.T) {
	var l Local // the zero value is ready to use
	const n = 64
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.TryLock(context.Background(), "k"); err == nil {
				mu.Lock()
				winners++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if winners != 1 {
		t.Fatalf("%d goroutines got the lock, want exactly 1", winners)
	}
}
