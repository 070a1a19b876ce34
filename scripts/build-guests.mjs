// Placeholder: assembles the built-in guests (filled in with the KVM backend).
