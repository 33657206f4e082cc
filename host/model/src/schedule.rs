//! The one scheduler: decides from a build's job states what runs next, what is skipped or cancelled, when post steps run and when the build ends.
