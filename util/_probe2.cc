int probe2() { return 2; }
