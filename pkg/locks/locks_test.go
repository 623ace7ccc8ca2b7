package locks

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestMutualExclusion(t *testing.T) {
	k := New()
	var inside, max int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := k.Lock(context.Background(), "vol")
			if err != nil {
				t.Error(err)
				return
			}
			n := atomic.AddInt32(&inside, 1)
			for {
				m := atomic.LoadInt32(&max)
				if n <= m || atomic.CompareAndSwapInt32(&max, m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			atomic.AddInt32(&inside, -1)
			unlock()
		}()
	}
	wg.Wait()
	if max != 1 {
		t.Fatalf("%d holders at once", max)
	}
	if k.Len() != 0 {
		t.Fatalf("%d keys leaked", k.Len())
	}
}

func TestWaiterGivesUp(t *testing.T) {
	k := New()
	unlock, _ := k.Lock(context.Background(), "vol")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := k.Lock(ctx, "vol"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	other, err := k.Lock(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	other()
	unlock()
	unlock() // a second call must be harmless
	again, err := k.Lock(context.Background(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	again()
	if k.Len() != 0 {
		t.Fatalf("%d keys leaked", k.Len())
	}
}
